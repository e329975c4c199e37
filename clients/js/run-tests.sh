#!/usr/bin/env bash
# Tests of the JavaScript client (clients/js) against the real broker binary:
# installs node, npm and openssl from Debian's packages when missing, installs the
# locked dependencies into clients/js/node_modules, builds dist/ and runs node --test.
# HANDLER_BIN names the broker binary (default: ../../target/debug/handler from here).
set -euo pipefail
if [ -n "${HANDLER_BIN:-}" ]; then
    HANDLER_BIN=$(realpath -m -- "$HANDLER_BIN")
    export HANDLER_BIN
fi
cd "$(dirname "$0")"

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    echo "run-tests.sh: installing ${missing[*]} from Debian's packages"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
    echo "run-tests.sh: node $(node --version) is too old; the client needs node >= 18 (fetch)" >&2
    exit 1
fi
echo "run-tests.sh: node $(node --version), npm $(npm --version)"

handler=${HANDLER_BIN:-../../target/debug/handler}
if [ ! -x "$handler" ]; then
    echo "run-tests.sh: no broker binary at $handler: run 'cargo build' in the repository root, or set HANDLER_BIN" >&2
    exit 1
fi

if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund
else
    npm install --no-audit --no-fund
fi
npm run --silent build
node --test test/*.test.mjs
