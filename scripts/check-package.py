#!/usr/bin/env python3
"""Checks the deployment zip: exactly host.json, handler (mode 755, an x86-64 ELF
executable) and the three function folders' function.json, nothing else."""
import stat, sys, zipfile

path = sys.argv[1] if len(sys.argv) > 1 else "dist/token-broker.zip"
expected = {
    "host.json": 0o644,
    "handler": 0o755,
    "tokens/function.json": 0o644,
    "tokens-refresh/function.json": 0o644,
    "timer-refresh/function.json": 0o644,
}
with zipfile.ZipFile(path) as archive:
    found = {info.filename: stat.S_IMODE(info.external_attr >> 16) for info in archive.infolist()}
    if found != expected:
        sys.exit(f"check-package: {path} holds {sorted((n, oct(m)) for n, m in found.items())}, expected {sorted((n, oct(m)) for n, m in expected.items())}")
    head = archive.read("handler")[:20]
    # ELF magic, 64-bit, and e_machine 0x3e (x86-64) at offset 18.
    if head[:5] != b"\x7fELF\x02" or head[18:20] != b"\x3e\x00":
        sys.exit("check-package: handler is not a Linux x86-64 executable")
for name, mode in sorted(found.items()):
    print(f"  {oct(mode)[2:]}  {name}")
print(f"check-package: {path}: {len(found)} entries as expected")
