#!/usr/bin/env bash
# Runs the Python credential's tests against the real broker binary.
#   clients/python/run-tests.sh [pytest args...]
# HANDLER_BIN: the broker binary (default: target/debug/handler of this checkout;
# build it with `cargo build` at the repository root).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# Relative to where the script was run from: the tests run from $here.
HANDLER_BIN=$(realpath -m -- "${HANDLER_BIN:-$here/../../target/debug/handler}")
export HANDLER_BIN
venv="$here/.venv"

if [[ ! -x "$HANDLER_BIN" ]]; then
    echo "run-tests.sh: no broker binary at $HANDLER_BIN (run 'cargo build' at the repository root, or set HANDLER_BIN)" >&2
    exit 1
fi

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

# A venv whose pip is missing (a half-made one) is made again.
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "run-tests.sh: installing python3-venv (Debian)" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "${here}[test]"

cd "$here"
exec "$venv/bin/python" -m pytest "$@"
