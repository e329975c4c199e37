#!/usr/bin/env python3
"""Checks the deployment zip: exactly host.json, handler (mode 755, an x86-64 ELF
executable) and the three function folders' function.json, nothing else; and that
handler needs no glibc symbol version above GLIBC_2.28 (the Functions Linux workers
run Debian 11, glibc 2.31; scripts/package.sh links against 2.28).

    check-package.py [ZIP]          the zip (default dist/token-broker.zip)
    check-package.py --binary PATH  only the ELF and glibc checks, on a bare binary

The glibc versions are read from the ELF's version-needed table (DT_VERNEED, what
the dynamic loader checks), in Python: no binutils needed. A binary with no dynamic
glibc (static) passes."""
import argparse, re, stat, struct, sys, zipfile

MAX_GLIBC = (2, 28)
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_STRTAB = 0, 5
DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF


class ElfError(Exception):
    pass


def glibc_versions_needed(data):
    """Every GLIBC_* version name in the binary's version-needed table."""
    if data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ElfError("unknown ELF class or byte order")
    wide = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    word = "Q" if wide else "I"

    def unpack(fmt, offset):
        try:
            return struct.unpack_from(end + fmt, data, offset)
        except struct.error:
            raise ElfError("truncated ELF file") from None

    if wide:
        phoff, phentsize, phnum = unpack("Q", 32)[0], *unpack("HH", 54)
    else:
        phoff, phentsize, phnum = unpack("I", 28)[0], *unpack("HH", 42)
    loads, dynamic = [], None
    for i in range(phnum):
        at = phoff + i * phentsize
        if wide:
            p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = unpack("IIQQQQQQ", at)
        else:
            p_type, p_offset, p_vaddr, _, p_filesz, _, _, _ = unpack("IIIIIIII", at)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return set()  # statically linked: no shared glibc to need

    def file_offset(address):
        for vaddr, offset, size in loads:
            if vaddr <= address < vaddr + size:
                return offset + address - vaddr
        raise ElfError(f"address {address:#x} is in no loaded segment")

    entries = {}
    entry = struct.calcsize(end + word * 2)
    for at in range(dynamic[0], dynamic[0] + dynamic[1], entry):
        tag, value = unpack(word * 2, at)
        if tag == DT_NULL:
            break
        entries.setdefault(tag, value)
    if DT_VERNEED not in entries:
        return set()
    strtab = file_offset(entries[DT_STRTAB])

    def string(offset):
        start = strtab + offset
        stop = data.find(b"\0", start)
        if stop < 0:
            raise ElfError("unterminated string")
        return data[start:stop].decode("ascii", "replace")

    names = set()
    verneed = file_offset(entries[DT_VERNEED])
    for _ in range(entries.get(DT_VERNEEDNUM, 0)):
        # Elf_Verneed: vn_version, vn_cnt, vn_file, vn_aux, vn_next (same in 32/64-bit).
        _, count, _, aux, following = unpack("HHIII", verneed)
        at = verneed + aux
        for _ in range(count):
            # Elf_Vernaux: vna_hash, vna_flags, vna_other, vna_name, vna_next.
            _, _, _, name, following_aux = unpack("IHHII", at)
            version = string(name)
            if version.startswith("GLIBC_"):
                names.add(version)
            at += following_aux
        if following == 0:
            break
        verneed += following
    return names


def check_glibc(data, label):
    """Exits with one line when the binary needs a glibc above MAX_GLIBC; else
    returns a line naming the highest version it needs."""
    try:
        names = glibc_versions_needed(data)
    except ElfError as error:
        sys.exit(f"check-package: {label}: cannot read its ELF version table: {error}")
    limit = "GLIBC_" + ".".join(map(str, MAX_GLIBC))
    numbered, other = [], []
    for name in names:
        match = re.fullmatch(r"GLIBC_(\d+(?:\.\d+)*)", name)
        if match:
            numbered.append((tuple(int(part) for part in match.group(1).split(".")), name))
        else:
            other.append(name)  # GLIBC_PRIVATE, GLIBC_ABI_DT_RELR (2.36): not on 2.28
    highest = max(numbered)[1] if numbered else None
    if other:
        sys.exit(f"check-package: {label} needs {', '.join(sorted(other))} from glibc, "
                 f"which glibc {limit[6:]} lacks (the Functions workers run glibc 2.31); "
                 "build it with scripts/package.sh")
    if numbered and max(numbered)[0] > MAX_GLIBC:
        sys.exit(f"check-package: {label} needs {highest}, above {limit} (the Functions "
                 "workers run Debian 11, glibc 2.31); build it with scripts/package.sh")
    if highest is None:
        return f"check-package: {label} needs no versioned glibc symbols"
    return f"check-package: {label} needs at most {highest} (limit {limit})"


def check_elf_header(data, label):
    # ELF magic, 64-bit, and e_machine 0x3e (x86-64) at offset 18.
    if data[:5] != b"\x7fELF\x02" or data[18:20] != b"\x3e\x00":
        sys.exit(f"check-package: {label} is not a Linux x86-64 executable")


def check_zip(path):
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
        handler = archive.read("handler")
    check_elf_header(handler, "handler")
    glibc = check_glibc(handler, f"{path}: handler")
    for name, mode in sorted(found.items()):
        print(f"  {oct(mode)[2:]}  {name}")
    print(glibc)
    print(f"check-package: {path}: {len(found)} entries as expected")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zip", nargs="?", help="the zip (default dist/token-broker.zip)")
    parser.add_argument("--binary", metavar="PATH", help="check a bare binary instead of a zip")
    args = parser.parse_args()
    if args.binary is None:
        check_zip(args.zip or "dist/token-broker.zip")
        return
    if args.zip is not None:
        parser.error("give a zip or --binary PATH, not both")
    with open(args.binary, "rb") as binary:
        data = binary.read()
    check_elf_header(data, args.binary)
    print(check_glibc(data, args.binary))


main()
