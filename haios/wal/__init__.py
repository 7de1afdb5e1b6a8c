"""The write-ahead log (SPEC §2.3): record format, writer with group commit, reader, verify, repair."""

from ..errors import Corruption, RepairRefused, WalCorruptError, WalFailedError, WalLockedError, WalReadOnlyError
from .format import DURABLE_TYPES, FORMAT_VERSION, MAX_PAYLOAD, REQUIRED_FIELDS, RecordType
from .reader import Cursor, Record, VerifyReport, WalReader, read_records, verify, wal_dir
from .repair import RepairReport, repair
from .writer import Wal

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
