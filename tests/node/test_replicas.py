"""A node's WAL replication is plugged in from above (haios.replication): a program that opens a
replicating node without it refuses to write, rather than write what the replicas would not get."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers import subprocs

from haios.node import init_node_root
from haios.wal import read_records

OPEN_AND_APPEND = """
import sys
from haios.node import Node
from haios.errors import HaiosError
try:
    Node(sys.argv[1]).begin(1, "ANALYZE", participants=["n1"]).close()
except HaiosError as exc:
    print("refused:", exc.message)
else:
    print("written")
"""


def _node(tmp_path: Path, mode: str) -> Path:
    root = tmp_path / "n1"
    init_node_root(root, "n1", {"replication": {"mode": mode, "peers": {}}, "membership": {"n1": "active"}})
    return root


def _run(root: Path, *, plugged: bool) -> str:
    code = ("import haios.replication\n" if plugged else "") + OPEN_AND_APPEND
    done = subprocs.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_replicating_node_refuses_to_write_without_replication_loaded(tmp_path: Path) -> None:
    root = _node(tmp_path, "sync-majority")
    out = _run(root, plugged=False)
    assert out.startswith("refused:") and "no replication loaded" in out
    assert [r.type for r in read_records(root / "wal")] == []  # nothing reached the WAL


def test_a_node_that_does_not_replicate_needs_no_replication(tmp_path: Path) -> None:
    assert _run(_node(tmp_path, "off"), plugged=False) == "written"
