"""The floors of haios's packages: every import in ``haios/`` — function-local ones and those under
``TYPE_CHECKING`` included — goes down (or sideways without a cycle), never up.

::

    haios (__init__)                               the public API, a lazy facade
    cli, sim                                       the command line and the simulator
    ops                                            the use cases: open a repo, a transport, a backend
    recovery detect metrics alerts audit coord     the cores and the services
    transport replication overrides timeline cluster
    node wal config budget controlfile             the node side and the desired state
    errors fsutil layout timefmt untrusted …       the ground floor
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "haios"

FLOORS: dict[str, int] = {
    "__init__": 5,  # the public API: a lazy facade over the floors below
    **dict.fromkeys(("cli", "sim", "__main__"), 4),
    "ops": 3,
    **dict.fromkeys(
        (
            "recovery",
            "detect",
            "metrics",
            "alerts",
            "audit",
            "coord",
            "transport",
            "replication",
            "overrides",
            "timeline",
            "cluster",
        ),
        2,
    ),
    **dict.fromkeys(("node", "wal", "config", "budget", "controlfile"), 1),
    **dict.fromkeys(
        (
            "__version__",
            "_lazy",
            "errors",
            "fsutil",
            "layout",
            "timefmt",
            "untrusted",
            "vclock",
            "clock",
            "events",
            "procutil",
            "resources",
            "gitrepo",
            "sshkeys",
            "_data",
        ),
        0,
    ),
}
# the cores import nothing of the floor they share but what is named here (sideways, acyclic)
CORES = {
    "recovery": {"coord", "detect", "overrides", "transport"},
    "detect": set(),
    "node": {"wal", "config", "controlfile"},
    "wal": set(),
}


# and none of these, whatever their floor: the recovery core keeps no git, metrics, alerts or audit
NEVER = {"recovery": {"gitrepo", "audit", "metrics", "alerts"}, "detect": {"gitrepo", "audit", "metrics", "alerts"}}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> list[tuple[str, str, str, int]]:
    """(importing package, imported package, file, line) for every haios import of another package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                full = ".".join([*base, *([node.module] if node.module else [])])
                targets = [full] if node.module else [f"{full}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.split(".")[0] != "haios":
                    continue
                mine, theirs = _package(module), _package(target)
                if mine != theirs:
                    found.append((mine, theirs, str(path.relative_to(PACKAGE.parent)), node.lineno))
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2:
        return "__init__"
    if parts[1] == "__version__":
        return "__version__"  # a constant of haios/__init__.py, not its lazy facade
    return parts[1]


def test_every_package_has_a_floor() -> None:
    packages = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if not p.name.startswith(".")}
    packages = {p for p in packages if p not in ("__pycache__", "py")}
    assert packages - set(FLOORS) == set()


def test_no_import_goes_up_a_floor() -> None:
    up = [
        f"{file}:{line}: {mine} (floor {FLOORS[mine]}) imports {theirs} (floor {FLOORS[theirs]})"
        for mine, theirs, file, line in _imports()
        if FLOORS[theirs] > FLOORS[mine]
    ]
    assert up == []


@pytest.mark.parametrize("core", sorted(CORES))
def test_the_cores_import_only_what_they_may(core: str) -> None:
    """recovery, detect, node and wal import nothing of their own floor but what CORES allows."""
    sideways = [
        f"{file}:{line}: {core} imports {theirs}"
        for mine, theirs, file, line in _imports()
        if mine == core and FLOORS[theirs] == FLOORS[core] and theirs not in CORES[core]
    ]
    assert sideways == []


def test_the_cores_keep_out_of_git_metrics_and_alerts() -> None:
    banned = [
        f"{file}:{line}: {mine} imports {theirs}"
        for mine, theirs, file, line in _imports()
        if theirs in NEVER.get(mine, ())
    ]
    assert banned == []


def test_no_package_cycles() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for mine, theirs, _file, _line in _imports():
        graph[mine].add(theirs)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            for nxt in graph[current]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(f"{a} <-> {b}" for a in list(graph) for b in graph[a] if a < b and reaches(b, a))
    assert cycles == []
