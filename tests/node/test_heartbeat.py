"""Heartbeats on real node roots (gossip: test_gossip.py and test_agent.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import haios
from haios.node import init_node_root
from haios.node.heartbeat import beat
from haios.timefmt import parse_utc, utc

T0 = 1_790_000_000.0


@pytest.fixture
def cluster(tmp_path: Path) -> dict[str, Path]:
    roots = {}
    for name in ("n1", "n2", "n3"):
        roots[name] = tmp_path / name
        init_node_root(roots[name], name, {"cluster": "c", "max_g": None})
    return roots


def test_heartbeat_seq_increases(cluster: dict[str, Path]) -> None:
    assert beat(cluster["n1"], "n1", T0) == {
        "node": "n1",
        "seq": 1,
        "wall_time": "2026-09-21T14:13:20.000Z",
        "haios_version": haios.__version__,
    }
    assert beat(cluster["n1"], "n1", T0 + 15)["seq"] == 2
    assert parse_utc(utc(T0 + 0.25)) == T0 + 0.25
