"""haios: keep a HAiOS cluster's phase transitions atomic and recoverable.

The public library API. Nothing here imports the command line (typer, rich).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Problem, RepoConfig, ValidationReport, load_repo, validate_repo
from .config.scaffold import InitResult, init_repo
from .controlfile import ControlFile
from .errors import (
    BlockedError,
    ConfigError,
    ControlFileError,
    ControlFileMissing,
    FencedError,
    HaiosError,
    IntegrityError,
    Interrupted,
    LockHeldError,
    RepoError,
    StorageError,
    UsageError,
    VerificationError,
    VersionConflict,
)
from .fsutil import atomic_write

__all__ = [
    "BlockedError",
    "ConfigError",
    "ControlFile",
    "ControlFileError",
    "ControlFileMissing",
    "FencedError",
    "HaiosError",
    "InitResult",
    "IntegrityError",
    "Interrupted",
    "LockHeldError",
    "Problem",
    "RepoConfig",
    "RepoError",
    "StorageError",
    "UsageError",
    "ValidationReport",
    "VerificationError",
    "VersionConflict",
    "__version__",
    "atomic_write",
    "init_repo",
    "load_repo",
    "validate_repo",
]
