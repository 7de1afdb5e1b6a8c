"""Node roots (SPEC §2.1)."""

from __future__ import annotations

from pathlib import Path

from haios import controlfile
from haios.node import init_node_root


def test_root_init_creates_layout_and_control_files(tmp_path: Path) -> None:
    root = tmp_path / "n1"
    assert init_node_root(root, "n1", {"cluster": "c"}) is True
    assert sorted(p.name for p in root.iterdir()) == [
        "data",
        "fence",
        "policy",
        "replicas",
        "snapshots",
        "state.txt",
        "wal",
    ]
    assert controlfile.read_mapping(root / "fence") == ({"shards": {}}, 1)


def test_root_init_never_overwrites_existing_state(tmp_path: Path) -> None:
    root = tmp_path / "n1"
    init_node_root(root, "n1", {"cluster": "c"})
    controlfile.write_mapping(
        root / "state.txt", {"node": "n1", "g": 9, "ph": "IDLE", "status": "READY"}, expected_version=1
    )
    assert init_node_root(root, "n1", {"cluster": "other"}) is False
    assert controlfile.read_mapping(root / "state.txt")[0]["g"] == 9
    assert controlfile.read_mapping(root / "policy")[0] == {"cluster": "c"}


def test_root_init_completes_a_half_made_root(tmp_path: Path) -> None:
    root = tmp_path / "n1"
    (root / "wal").mkdir(parents=True)
    controlfile.write_mapping(root / "policy", {"cluster": "c"}, expected_version=None)  # crashed after policy
    assert init_node_root(root, "n1", {"cluster": "c"}) is True
    assert controlfile.read_mapping(root / "state.txt")[0]["g"] == 0
