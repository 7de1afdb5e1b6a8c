"""Gossip by sequence numbers: fresh evidence only, direct or relayed, judged by the learner's clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from haios import controlfile
from haios.errors import UsageError
from haios.node import init_node_root
from haios.node.gossip import checked_view, handle, learn, view
from haios.node.heartbeat import beat
from haios.timefmt import utc

T0 = 1_800_000_000.0
NODES = ("n1", "n2", "n3", "n4", "n5")


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    policy = {"cluster": "c", "max_g": None, "membership": dict.fromkeys(NODES, "active")}
    out = {}
    for name in NODES:
        out[name] = tmp_path / name
        init_node_root(out[name], name, policy)
    return out


def test_a_member_is_heard_only_when_its_number_rises(roots: dict[str, Path]) -> None:
    body = learn(roots["n1"], "n1", NODES, {"n2": 4, "n3": 7}, T0, window=45)
    assert body["peers"]["n2"] == utc(T0) and body["seqs"] == {"n2": 4, "n3": 7}
    body = learn(roots["n1"], "n1", NODES, {"n2": 4, "n3": 8}, T0 + 30, window=45)  # n2 said nothing new
    assert (body["peers"]["n2"], body["peers"]["n3"]) == (utc(T0), utc(T0 + 30))
    body = learn(roots["n1"], "n1", NODES, {"n2": 3}, T0 + 40, window=45)  # an older number is no evidence
    assert body["peers"]["n2"] == utc(T0) and body["seqs"]["n2"] == 4


def test_a_majority_silent_for_the_window_is_a_partition_and_heals(roots: dict[str, Path]) -> None:
    body = learn(roots["n1"], "n1", NODES, {"n2": 1, "n3": 1, "n4": 1, "n5": 1}, T0, window=45)
    assert body["partition_status"] == "NORMAL"
    body = learn(roots["n1"], "n1", NODES, {"n2": 2}, T0 + 50, window=45)  # only n2 heard since
    assert body["partition_status"] == "PARTITIONED" and body["since"] == utc(T0 + 50)
    body = learn(roots["n1"], "n1", NODES, {"n3": 2, "n4": 2}, T0 + 60, window=45)
    assert (body["partition_status"], body["since"]) == ("NORMAL", utc(T0 + 60))


def test_a_peer_learns_without_deciding_and_answers_its_view(roots: dict[str, Path]) -> None:
    beat(roots["n2"], "n2", T0)
    learn(roots["n2"], "n2", NODES, {"n3": 9}, T0, window=45)
    stamped = controlfile.read_mapping(roots["n2"] / "gossip")[0]["updated_at"]
    answer = handle(roots["n2"], {"op": "gossip", "from": "n1", "view": {"n1": 5, "n4": 2}}, T0 + 100)
    assert answer == {"node": "n2", "view": {"n3": 9, "n1": 5, "n4": 2, "n2": 1}}
    body = controlfile.read_mapping(roots["n2"] / "gossip")[0]
    assert body["updated_at"] == stamped  # only the node's own agent stamps it: a dead agent's file goes stale
    assert body["peers"]["n1"] == utc(T0 + 100)
    assert view(roots["n2"], "n2")["n2"] == 1


def test_a_relayed_number_counts_a_stopped_member_does_not(roots: dict[str, Path]) -> None:
    learn(roots["n1"], "n1", NODES, {"n5": 3}, T0, window=45)
    # n5 stopped at 3: others keep relaying 3, which is nothing new
    for t in (20, 40, 60):
        body = learn(roots["n1"], "n1", NODES, {"n5": 3, "n2": int(t)}, T0 + t, window=45)
    assert body["peers"]["n5"] == utc(T0) and body["peers"]["n2"] == utc(T0 + 60)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"op": "gossip", "from": "n1", "view": {"N1": 1}}, "no node name"),
        ({"op": "gossip", "from": "n1", "view": {"n1": -1}}, "sequence number"),
        ({"op": "gossip", "from": "n1", "view": {"n1": True}}, "sequence number"),
        ({"op": "gossip", "from": "n1", "view": [1]}, "mapping"),
        ({"op": "gossip", "from": "stranger", "view": {}}, "not a member"),
        ({"op": "forget", "from": "n1", "view": {}}, "unknown gossip operation"),
    ],
)
def test_a_request_no_member_sent_is_refused(roots: dict[str, Path], bad: dict[str, object], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        handle(roots["n2"], bad, T0)
    assert not (roots["n2"] / "gossip").exists() or "n1" not in str(controlfile.read(roots["n2"] / "gossip").body)


def test_a_view_too_large_is_refused_unread() -> None:
    with pytest.raises(UsageError, match="at most"):
        checked_view({f"n{i}": 1 for i in range(10_001)})


def test_a_hostile_gossip_file_entry_is_silence(roots: dict[str, Path]) -> None:
    controlfile.write_mapping(
        roots["n1"] / "gossip",
        {"node": "n1", "peers": {"n2": "yesterday", "n3": 7}, "seqs": {"n2": "x"}, "partition_status": "NORMAL"},
        expected_version=None,
    )
    body = learn(roots["n1"], "n1", NODES, {"n4": 1, "n5": 1}, T0, window=45)
    assert body["peers"] == {"n2": None, "n3": None, "n4": utc(T0), "n5": utc(T0)}
    assert body["partition_status"] == "NORMAL" and body["seqs"] == {"n4": 1, "n5": 1}
