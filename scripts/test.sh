#!/usr/bin/env bash
# The project's test command (README, CI): installs what the tests need when it is
# missing, then checks formatting and lints and runs every test. Each test starts
# its own redis-server (or three-master Redis Cluster) on free loopback ports and
# stops it when done.
set -euo pipefail
cd "$(dirname "$0")/.."

# redis-server (its package brings redis-cli, which creates test clusters),
# openssl (which makes the TLS test's certificates) and shellcheck (the scripts,
# the deployment script among them, are kept clean), from Debian's packages.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing ${missing[*]} from Debian's packages"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "test.sh: $(redis-server --version)"

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
python3 scripts/check-layers.py
shellcheck scripts/*.sh clients/*/run-tests.sh .ci/run
# Every log of the run lands here; afterwards none may contain a token or secret.
logs=target/tmp/test-logs
rm -rf "$logs"
mkdir -p "$logs"
# Benchmarks are compiled by clippy above and run on demand (BENCHMARKS.md), not here.
cargo test --lib --bins --tests --locked 2>&1 | tee "$logs/cargo-test.out"
# Second pass: every integration test again, each on its own three-master Redis
# Cluster (scale:: starts its own cluster and TLS servers in the first pass).
TEST_REDIS_CLUSTER=1 cargo test --test it --locked -- --skip scale:: 2>&1 |
    tee "$logs/cargo-test-cluster.out"
# The Azure SDK credential adapters (clients/), each against the handler binary the
# tests above built; their dependencies go into clients/python/.venv and
# clients/js/node_modules from PyPI and npm.
HANDLER_BIN=target/debug/handler clients/python/run-tests.sh -q
HANDLER_BIN=target/debug/handler clients/js/run-tests.sh
scripts/check-secrets.sh "$logs"
# The package's glibc check must bite: target/debug/handler (built by cargo test
# above, linked against this machine's glibc) needs GLIBC_2.34 wherever glibc is
# 2.34 or newer (Debian 12 and later), above the 2.28 the package is built for.
host_glibc=$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)
if [ "$(printf '%s\n' 2.34 "$host_glibc" | sort -V | head -1)" = 2.34 ]; then
    if refusal=$(python3 scripts/check-package.py --binary target/debug/handler 2>&1); then
        echo "test.sh: check-package.py passed target/debug/handler (glibc $host_glibc): $refusal" >&2
        exit 1
    fi
    if ! grep -q 'needs GLIBC_2\.[0-9]*, above GLIBC_2\.28' <<<"$refusal"; then
        echo "test.sh: check-package.py refused target/debug/handler, not for its glibc version: $refusal" >&2
        exit 1
    fi
    echo "test.sh: a plain build is refused, as it should be: $refusal"
else
    echo "test.sh: glibc $host_glibc here; not checking that a plain build is refused"
fi
# The deployment package: built as release against glibc 2.28, then its listing and
# the glibc versions its handler needs checked.
scripts/package.sh
python3 scripts/check-package.py dist/token-broker.zip
