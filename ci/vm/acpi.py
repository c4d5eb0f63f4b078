"""ACPI table override that makes QEMU's spare vCPU slots hot-pluggable on Linux 6.12 and 7.3
under TCG.

Those kernels count a disabled local APIC entry of the MADT as a hot-pluggable CPU only when
the MADT says so with the Online-Capable flag (MADT revision 5, ACPI 6.3); QEMU 7.2 writes an
older MADT, so without this the guest sees "2 present CPUs plus 0 hotplug CPUs". The fix
(measured on this project's host; see docs/DESIGN.md §8): take QEMU's own FADT and MADT from a first boot
with the same -smp/maxcpus layout, raise the FADT to revision 6.3 (276 bytes), raise the MADT to
revision 5 with Online-Capable on every disabled local APIC entry, and hand both to the kernel
as an early uncompressed cpio (kernel/firmware/acpi/*.aml, CONFIG_ACPI_TABLE_UPGRADE).
"""

import struct

HEADER = 36  # signature, length, revision, checksum, OEM id, OEM table id, OEM rev, creator
FADT_63_LEN = 276
FADT_MINOR_OFF = 131  # "FADT Minor Version" (ACPI 5.1+)
MADT_LAPIC = 0
MADT_X2APIC = 9
LAPIC_ENABLED = 1
LAPIC_ONLINE_CAPABLE = 2


def checksum(table: bytearray) -> bytearray:
    table[9] = 0
    table[9] = (-sum(table)) & 0xFF
    return table


def header(table: bytes):
    sig, length, rev = struct.unpack_from("<4sIB", table, 0)
    return sig.decode("ascii", "replace"), length, rev


def check(table: bytes, sig: str) -> None:
    s, length, _ = header(table)
    if s != sig:
        raise ValueError(f"expected an ACPI {sig} table, got {s!r}")
    if length != len(table):
        raise ValueError(f"{sig}: header length {length} but {len(table)} bytes")
    if sum(table) & 0xFF:
        raise ValueError(f"{sig}: bad checksum")


def _bump_oem_revision(t: bytearray) -> None:
    # The override must carry the same signature, OEM id and OEM table id; a higher OEM
    # revision makes it the newer table in every kernel's eyes.
    (oem_rev,) = struct.unpack_from("<I", t, 24)
    struct.pack_into("<I", t, 24, (oem_rev + 1) & 0xFFFFFFFF)


def patch_fadt(orig: bytes) -> bytes:
    check(orig, "FACP")
    if len(orig) > FADT_63_LEN:
        raise ValueError(f"FACP: {len(orig)} bytes, longer than an ACPI 6.3 FADT")
    t = bytearray(orig) + bytes(FADT_63_LEN - len(orig))
    struct.pack_into("<I", t, 4, FADT_63_LEN)
    t[8] = 6
    t[FADT_MINOR_OFF] = 3
    _bump_oem_revision(t)
    return bytes(checksum(t))


def patch_madt(orig: bytes):
    """Returns (patched table, number of entries marked online-capable)."""
    check(orig, "APIC")
    t = bytearray(orig)
    t[8] = max(t[8], 5)
    off = HEADER + 8  # local APIC address, flags
    marked = 0
    while off + 2 <= len(t):
        etype, elen = t[off], t[off + 1]
        if elen < 2 or off + elen > len(t):
            raise ValueError(f"APIC: malformed entry at offset {off}")
        if etype == MADT_LAPIC and elen >= 8:
            (flags,) = struct.unpack_from("<I", t, off + 4)
            if not flags & LAPIC_ENABLED:
                struct.pack_into("<I", t, off + 4, flags | LAPIC_ONLINE_CAPABLE)
                marked += 1
        elif etype == MADT_X2APIC and elen >= 16:
            (flags,) = struct.unpack_from("<I", t, off + 8)
            if not flags & LAPIC_ENABLED:
                struct.pack_into("<I", t, off + 8, flags | LAPIC_ONLINE_CAPABLE)
                marked += 1
        off += elen
    _bump_oem_revision(t)
    return bytes(checksum(t)), marked


def lapics(madt: bytes):
    """(apic id, flags) of every local APIC / x2APIC entry."""
    out = []
    off = HEADER + 8
    while off + 2 <= len(madt):
        etype, elen = madt[off], madt[off + 1]
        if elen < 2:
            break
        if etype == MADT_LAPIC and elen >= 8:
            out.append((madt[off + 3], struct.unpack_from("<I", madt, off + 4)[0]))
        elif etype == MADT_X2APIC and elen >= 16:
            out.append(struct.unpack_from("<II", madt, off + 4))
        off += elen
    return out
