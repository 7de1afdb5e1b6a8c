"""haios: keep a HAiOS cluster's phase transitions atomic and recoverable.

The public library API. Nothing here imports the command line (typer, rich).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import exports

__version__ = "0.1.0"

# the names below are imported on first use (PEP 562): ``import haios`` (and ``haios --version``)
# stays cheap, and a program pays only for the parts it touches
_LAZY = {
    "Problem": ".config",
    "RepoConfig": ".config",
    "ValidationReport": ".config",
    "load_repo": ".config",
    "validate_repo": ".config",
    "InitResult": ".ops.init",
    "init_repo": ".ops.init",
    "ControlFile": ".controlfile",
    "atomic_write": ".fsutil",
    **dict.fromkeys(
        (
            "BlockedError",
            "ConfigError",
            "ControlFileError",
            "ControlFileMissing",
            "FencedError",
            "HaiosError",
            "IntegrityError",
            "Interrupted",
            "LockHeldError",
            "RepoError",
            "StorageError",
            "UsageError",
            "VerificationError",
            "VersionConflict",
        ),
        ".errors",
    ),
}

if TYPE_CHECKING:
    from .config import RepoConfig, ValidationReport, load_repo, validate_repo
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
        Problem,
        RepoError,
        StorageError,
        UsageError,
        VerificationError,
        VersionConflict,
    )
    from .fsutil import atomic_write
    from .ops.init import InitResult, init_repo


__getattr__ = exports(__name__, _LAZY)


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
