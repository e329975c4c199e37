#!/usr/bin/env bash
# Builds the Linux x86-64 release binary and the Functions app zip that
# `func azure functionapp publish` or zip deploy takes: host.json, the three
# function folders and `handler` (mode 755; many zip tools drop the executable bit,
# so the zip is written here with explicit modes). Output: dist/token-broker.zip.
#
# The binary is linked against glibc 2.28 (cargo-zigbuild, with zig as C compiler
# and linker), not against the build machine's glibc: the Functions Linux workers
# run Debian 11 (glibc 2.31), where a plain `cargo build` from a newer machine
# fails to start ("version `GLIBC_2.34' not found"). scripts/check-package.py
# checks the highest glibc version the zipped binary needs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "package.sh: build on Linux x86-64 (the Functions Linux workers run that)" >&2
    exit 1
fi

# Pinned build tools, installed when missing. aws-lc-sys (C, through the cc crate)
# is compiled by `zig cc` with these versions.
zigbuild_version=0.24.1
zig_version=0.14.1
glibc_target=x86_64-unknown-linux-gnu.2.28
target_dir=${CARGO_TARGET_DIR:-target}

# cargo runs subcommands from $CARGO_HOME/bin first, where `cargo install` puts them.
if ! cargo install --list | grep -qx "cargo-zigbuild v$zigbuild_version:"; then
    echo "package.sh: installing cargo-zigbuild $zigbuild_version (cargo install, a few minutes)"
    cargo install cargo-zigbuild --locked --version "$zigbuild_version"
fi

# cargo-zigbuild runs `python3 -m ziglang` (PyPI's zig) when it works and falls
# back to `zig` on PATH, so no zig on PATH is needed. If python3 refuses installs
# into its own environment (Debian's python3: "externally-managed-environment"),
# ziglang goes into a private directory under target/ instead, put on PYTHONPATH.
zig_dir="$target_dir/tools/ziglang-$zig_version"
if [ -d "$zig_dir/ziglang" ]; then
    PYTHONPATH="$(cd "$zig_dir" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
fi
if [ "$(python3 -m ziglang version 2>/dev/null)" != "$zig_version" ]; then
    echo "package.sh: installing zig $zig_version (python3 -m pip install ziglang==$zig_version)"
    if ! python3 -m pip install --quiet "ziglang==$zig_version"; then
        echo "package.sh: pip refused that (above); installing ziglang into $zig_dir instead"
        rm -rf "$zig_dir"
        python3 -m pip install --quiet --target "$zig_dir" "ziglang==$zig_version"
        PYTHONPATH="$(cd "$zig_dir" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
        export PYTHONPATH
    fi
    found=$(python3 -m ziglang version 2>/dev/null || true)
    if [ "$found" != "$zig_version" ]; then
        echo "package.sh: python3 -m ziglang gives '${found}', expected $zig_version" >&2
        exit 1
    fi
fi

cargo zigbuild --release --locked --bin handler --target "$glibc_target"
binary="$target_dir/x86_64-unknown-linux-gnu/release/handler"
rm -rf dist
mkdir -p dist
python3 - "$binary" <<'PY'
import os, sys, zipfile
entries = [("host.json", "host.json", 0o644), (sys.argv[1], "handler", 0o755)]
for folder in ("tokens", "tokens-refresh", "timer-refresh"):
    entries.append((f"{folder}/function.json", f"{folder}/function.json", 0o644))
with zipfile.ZipFile("dist/token-broker.zip", "w", zipfile.ZIP_DEFLATED) as archive:
    for source, name, mode in entries:
        info = zipfile.ZipInfo.from_file(source, name)
        # Unix permissions live in the high 16 bits; 0o100000 marks a regular file.
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(source, "rb") as data:
            archive.writestr(info, data.read())
PY
echo "package.sh: dist/token-broker.zip ($(du -h dist/token-broker.zip | cut -f1))"
