"""The record checks of :func:`haios.wal.reader._fast_scan` for a run of plain records, in C (see _scan.c)."""

def scan(
    view: bytes | memoryview,
    salt: int,
    lamport: int,
    crc: int,
    types: int,
    known_flags: int,
    lz4_flag: int,
    jump_flag: int,
    /,
) -> tuple[int, int, int, int, int]: ...
