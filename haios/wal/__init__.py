"""The write-ahead log (SPEC §2.3): record format, writer with group commit, reader, verify, repair."""

from .format import DURABLE_TYPES, FORMAT_VERSION, MAX_PAYLOAD, REQUIRED_FIELDS, RecordType
from .reader import Corruption, Cursor, Record, VerifyReport, WalCorruptError, WalReader, read_records, verify, wal_dir
from .repair import RepairRefused, RepairReport, repair
from .writer import Wal, WalFailedError, WalLockedError, WalReadOnlyError

__all__ = [
    "DURABLE_TYPES",
    "FORMAT_VERSION",
    "MAX_PAYLOAD",
    "REQUIRED_FIELDS",
    "Corruption",
    "Cursor",
    "Record",
    "RecordType",
    "RepairRefused",
    "RepairReport",
    "VerifyReport",
    "Wal",
    "WalCorruptError",
    "WalFailedError",
    "WalLockedError",
    "WalReadOnlyError",
    "WalReader",
    "read_records",
    "repair",
    "verify",
    "wal_dir",
]
