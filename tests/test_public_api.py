"""The public API is locked: a change to ``haios.__all__`` must be deliberate."""

from __future__ import annotations

import sys

from helpers import subprocs

import haios

EXPECTED = [
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


def test_public_api_all_is_locked() -> None:
    assert sorted(haios.__all__) == EXPECTED
    for name in haios.__all__:
        assert hasattr(haios, name)


def test_public_api_does_not_import_cli_libraries() -> None:
    code = "import sys, haios, haios.config, haios.controlfile; print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich')))"
    out = subprocs.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_library_modules_never_import_typer_or_rich() -> None:
    from pathlib import Path

    package = Path(haios.__file__).parent
    for path in package.rglob("*.py"):
        if "cli" in path.relative_to(package).parts:
            continue
        text = path.read_text()
        assert "import typer" not in text and "from typer" not in text, path
        assert "import rich" not in text and "from rich" not in text, path
