#!/usr/bin/env bash
# Builds the Linux x86-64 release binary and the Functions app zip that
# `func azure functionapp publish` or zip deploy takes: host.json, the three
# function folders and `handler` (mode 755; many zip tools drop the executable bit,
# so the zip is written here with explicit modes). Output: dist/token-broker.zip.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "package.sh: build on Linux x86-64 (the Functions Linux workers run that)" >&2
    exit 1
fi
cargo build --release --locked --bin handler
rm -rf dist
mkdir -p dist
python3 - <<'PY'
import os, zipfile
entries = [("host.json", "host.json", 0o644), ("target/release/handler", "handler", 0o755)]
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
