"""Every HaiosError crosses a process boundary as itself: ``to_wire`` / ``from_wire``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from haios import errors
from haios.errors import (
    Corruption,
    HaiosError,
    InputError,
    Problem,
    VersionConflict,
    WalCorruptError,
    YamlRejected,
    from_wire,
)

PACKAGE = Path(errors.__file__).parent


def _instance(cls: type[HaiosError]) -> HaiosError:
    special: dict[type[HaiosError], HaiosError] = {
        errors.ControlFileError: errors.ControlFileError("n/state.txt", "unreadable"),
        errors.ControlFileMissing: errors.ControlFileMissing("n/state.txt", "no such file"),
        errors.IntegrityError: errors.IntegrityError("n/state.txt", "footer hash mismatch"),
        VersionConflict: VersionConflict("n/state.txt", expected=3, actual=4),
        InputError: InputError("n/heartbeat", "over its size limit", line=3, column=7),
        WalCorruptError: WalCorruptError(Path("n/wal"), Corruption("00000001.seg", 4096, 17, "CRC mismatch", False)),
        YamlRejected: YamlRejected(Problem("haios.yaml", 2, 5, "nodes", "invalid YAML")),
    }
    return special.get(cls) or cls(f"node-1: a {cls.__name__}")


@pytest.mark.parametrize("cls", sorted(errors._classes().values(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_error_class_round_trips_the_wire(cls: type[HaiosError]) -> None:
    sent = _instance(cls)
    back = from_wire(sent.to_wire())
    assert type(back) is cls
    assert (back.message, back.hint, back.exit_code) == (sent.message, sent.hint, sent.exit_code)
    assert back.to_wire() == sent.to_wire()


def test_the_fields_a_class_needs_come_back() -> None:
    corrupt = from_wire(_instance(WalCorruptError).to_wire())
    assert (
        isinstance(corrupt, WalCorruptError) and corrupt.corruption.offset == 4096 and not corrupt.corruption.torn_tail
    )
    conflict = from_wire(_instance(VersionConflict).to_wire())
    assert isinstance(conflict, VersionConflict) and conflict.path == Path("n/state.txt")
    rejected = from_wire(_instance(YamlRejected).to_wire())
    assert isinstance(rejected, YamlRejected) and rejected.problem.line == 2


def test_an_unknown_class_keeps_its_exit_code_and_the_node_is_named() -> None:
    back = from_wire({"type": "FromANewerHaios", "message": "something new", "hint": "h", "exit_code": 3}, node="n2")
    assert type(back) is HaiosError and back.exit_code == 3 and back.message == "n2: something new"
    hostile = from_wire({"type": "__class__", "message": 7, "exit_code": "x"})
    assert type(hostile) is HaiosError and hostile.exit_code == 1


def test_every_haios_error_class_is_defined_in_errors_py() -> None:
    """One tree, drawn in errors.py's docstring: no HaiosError subclass lives anywhere else."""
    names = set(errors._classes())
    elsewhere = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & names:
                    elsewhere.append(f"{path.relative_to(PACKAGE.parent)}: {node.name}")
    assert elsewhere == []
    tree = (errors.__doc__ or "").split("Third-party")[0]
    assert [n for n in sorted(names) if n not in tree] == []
