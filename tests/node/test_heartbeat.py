"""Heartbeats and gossip on real node roots through the local transport."""

from __future__ import annotations

from pathlib import Path

import pytest

import haios
from haios import controlfile
from haios.node import Node, init_node_root
from haios.node.heartbeat import beat, update_gossip
from haios.timefmt import parse_utc, utc
from haios.transport import LocalTransport

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


def test_gossip_normal_when_peers_beat(cluster: dict[str, Path]) -> None:
    transport = LocalTransport(cluster)
    for name, root in cluster.items():
        beat(root, name, T0)
    body = update_gossip(cluster["n1"], "n1", cluster, transport.read_file, T0 + 10, 45)
    assert body["peers"] == {"n2": utc(T0), "n3": utc(T0)} and body["partition_status"] == "NORMAL"


def test_gossip_majority_silent_is_partitioned_then_heals(cluster: dict[str, Path]) -> None:
    transport = LocalTransport(cluster)
    for name, root in cluster.items():
        beat(root, name, T0)
    update_gossip(cluster["n1"], "n1", cluster, transport.read_file, T0 + 1, 45)
    body = update_gossip(cluster["n1"], "n1", cluster, transport.read_file, T0 + 60, 45)  # both peers silent 60 s
    assert body["partition_status"] == "PARTITIONED" and body["since"] == utc(T0 + 60)
    with pytest.raises(Exception, match="PARTITIONED"):
        Node(cluster["n1"], clock=lambda: T0 + 61).begin(1, "ANALYZE", participants=["n1"])
    beat(cluster["n2"], "n2", T0 + 70)
    body = update_gossip(cluster["n1"], "n1", cluster, transport.read_file, T0 + 71, 45)
    assert body["partition_status"] == "NORMAL" and body["since"] == utc(T0 + 71)  # one of two silent: not a majority


def test_gossip_unreadable_or_missing_heartbeat_is_silence(cluster: dict[str, Path]) -> None:
    transport = LocalTransport(cluster)
    beat(cluster["n2"], "n2", T0)
    (cluster["n2"] / "heartbeat").write_bytes(b"garbage")
    body = update_gossip(cluster["n1"], "n1", cluster, transport.read_file, T0 + 100, 45)
    assert body["peers"] == {"n2": None, "n3": None} and body["partition_status"] == "PARTITIONED"


def test_gossip_single_node_is_never_partitioned(cluster: dict[str, Path]) -> None:
    body = update_gossip(cluster["n1"], "n1", ["n1"], LocalTransport(cluster).read_file, T0, 45)
    assert body["partition_status"] == "NORMAL" and body["peers"] == {}
    assert controlfile.read_mapping(cluster["n1"] / "gossip")[1] == 1
