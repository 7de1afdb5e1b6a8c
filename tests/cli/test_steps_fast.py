"""The per-step fast path (``haios node step|side-effect|intent`` without the command line): it takes
exactly the well-formed calls, and each one logs the same records, prints the same line and fails
with the same message and exit code as the command line does."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import subprocs

from haios.cli._steps import fast_step
from haios.node import Node, init_node_root
from haios.wal import read_records

WHERE = ["--g", "1", "--phase", "ANALYZE"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    node = tmp_path / "node"
    init_node_root(node, "n1", {"cluster": "c", "max_g": None})
    Node(node).begin(1, "ANALYZE", participants=["n1"]).close()
    return node


@pytest.mark.parametrize(
    "rest",
    [
        ["step", "ROOT", *WHERE, "fetch"],
        ["step", "ROOT", "fetch", "--g=1", "--phase=ANALYZE", "--outcome", '{"n": 1}'],
        ["side-effect", "ROOT", *WHERE, "--key", "k", "--kind", "cloud.vm", "--compensator", "c", "--cost", "{}"],
        ["side-effect", "ROOT", *WHERE, "--key", "k", "--done", '{"id": 7}'],
        ["intent", "ROOT", *WHERE, "a/b.txt", "--content-file", "-"],
        ["intent", "ROOT", *WHERE, "a/b.txt", "--delete"],
    ],
)
def test_well_formed_calls_take_the_fast_path(root: Path, rest: list[str]) -> None:
    argv = ["node", *[str(root) if w == "ROOT" else w for w in rest]]
    call = fast_step(argv)
    assert call is not None and call.command == rest[0] and call.positional[0] == str(root)


@pytest.mark.parametrize(
    "rest",
    [
        ["step", "--help"],
        ["step", "ROOT", *WHERE, "fetch", "--help"],
        ["step", "ROOT", *WHERE],  # the name is missing
        ["step", "ROOT", *WHERE, "a", "b"],  # one argument too many
        ["step", "ROOT", "--phase", "ANALYZE", "fetch"],  # --g is missing
        ["step", "ROOT", *WHERE, "fetch", "--g", "2"],  # given twice
        ["step", "ROOT", "--g", "-1", "--phase", "ANALYZE", "fetch"],
        ["step", "ROOT", "--g", "one", "--phase", "ANALYZE", "fetch"],
        ["step", "ROOT", *WHERE, "fetch", "--outcom", "1"],  # a typo
        ["step", "ROOT", *WHERE, "--", "fetch"],
        ["step", "ROOT", *WHERE, "fetch", "--outcome"],  # no value
        ["step", "MISSING", *WHERE, "fetch"],
        ["side-effect", "ROOT", *WHERE, "--kind", "x"],  # --key is missing
        ["intent", "ROOT", *WHERE, "a", "--delete", "--delete"],
        ["prepare", "ROOT", *WHERE],  # not a sub-step
    ],
)
def test_anything_else_goes_to_the_command_line(root: Path, rest: list[str]) -> None:
    words = {"ROOT": str(root), "MISSING": str(root.parent / "missing")}
    argv = ["node", *[words.get(w, w) for w in rest]]
    assert fast_step(argv) is None
    assert fast_step(["--output", "json", *argv]) is None  # global options: the command line's
    assert fast_step(["--debug", "node", "step", str(root), *WHERE, "fetch"]) is None


def _run(argv: list[str], cwd: Path, stdin: str = "") -> tuple[int, str, str]:
    proc = subprocs.run(
        [sys.executable, "-m", "haios", *argv], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120
    )
    return proc.returncode, proc.stdout, proc.stderr


def _records(root: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for r in read_records(root / "wal"):
        payload = {k: v for k, v in r.payload.items() if k not in {"ts", "wall_time", "time"}}
        out.append((r.type.name, payload))
    return out


CALLS: list[tuple[list[str], str]] = [
    (["step", "ROOT", *WHERE, "fetch"], ""),
    (["step", "ROOT", *WHERE, "build", "--outcome", '{"artifacts": 2}'], ""),
    (["step", "ROOT", *WHERE, "bad", "--outcome", "{"], ""),  # not JSON: exit 1, the same words
    (["side-effect", "ROOT", *WHERE, "--key", "vm-1", "--kind", "cloud.vm", "--compensator", "vm-del"], ""),
    (["side-effect", "ROOT", *WHERE, "--key", "vm-1", "--done", '{"id": "i-7"}'], ""),
    (["side-effect", "ROOT", *WHERE, "--key", "vm-2"], ""),  # no --kind/--compensator: a usage error
    (["intent", "ROOT", *WHERE, "etc/app.conf", "--content-file", "-"], "v=2\n"),
    (["intent", "ROOT", *WHERE, "etc/old.conf", "--delete"], ""),
    (["intent", "ROOT", *WHERE, "etc/x.conf", "--content-file", "no-such-file"], ""),  # a usage error, no crash log
    (["intent", "ROOT", *WHERE, "../escape", "--content-file", "-"], "x"),  # refused by the node
    (["step", "ROOT", "--g", "2", "--phase", "ANALYZE", "late"], ""),  # no such phase open
]


def test_fast_path_and_command_line_log_and_print_the_same(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(root, other, symlinks=True)
    codes = set()
    for rest, stdin in CALLS:
        fast = ["node", *[str(root) if w == "ROOT" else w for w in rest]]
        slow = ["--no-color", "node", *[str(other) if w == "ROOT" else w for w in rest]]
        assert fast_step(fast) is not None and fast_step(slow) is None
        fast_rc, fast_out, fast_err = _run(fast, tmp_path, stdin)
        slow_rc, slow_out, slow_err = _run(slow, tmp_path, stdin)
        assert (fast_rc, fast_out) == (slow_rc, slow_out), rest
        assert fast_err.replace(str(root), "ROOT") == slow_err.replace(str(other), "ROOT"), rest
        assert "Traceback" not in fast_err and "internal error" not in fast_err
        codes.add(fast_rc)
    assert len(codes) > 1  # both successes and failures were compared
    assert _records(root) == _records(other)
    assert len(_records(root)) == 7  # BEGIN_PHASE, two steps, side effect and its end, two intents
