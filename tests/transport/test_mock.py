"""The mock transport: what is above the transport works the same through it (unit tests, no I/O
beyond a scratch directory)."""

from __future__ import annotations

from pathlib import Path

from helpers.cluster import plant

from haios.config import load_repo
from haios.ops import build
from haios.ops.observe import observe
from haios.transport import LocalTransport
from haios.transport.base import Completed
from haios.transport.mock import MockTransport


def _roots(cluster: Path) -> dict[str, Path]:
    return {n.name: n.local_root(cluster) for n in load_repo(cluster).cluster.nodes}


def test_observation_through_the_mock_equals_the_local_one(cluster: Path, tmp_path: Path) -> None:
    roots = _roots(cluster)
    mock = MockTransport.from_roots(roots, mirror=tmp_path / "mirror")
    through_mock, durations_mock = observe(tmp_path / "repo-a", mock, sorted(roots))
    local, durations = observe(tmp_path / "repo-b", LocalTransport(roots), sorted(roots))
    assert {n: (o.state, o.phases, o.last_lamport) for n, o in through_mock.items()} == {
        n: (o.state, o.phases, o.last_lamport) for n, o in local.items()
    }
    assert durations_mock == durations
    assert [op for _, op, _ in mock.log] == ["local_view"] * 3


def test_plan_blocks_on_a_node_the_mock_cannot_reach(cluster: Path, tmp_path: Path) -> None:
    from haios.node.recover import dispatch

    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    roots = _roots(cluster)
    mock = MockTransport.from_roots(
        roots, mirror=tmp_path / "mirror", handler=lambda node, request: dispatch(roots[node], request)
    )
    mock.down.add("node-2")
    plan, _ = build(cluster, transport=mock)
    (trace,) = plan.traces  # only the open transition: committed ones it cannot see are no evidence
    assert trace.verdict == "blocked" and "node-2 unreachable (unreachable (mock))" in trace.reason
    mock.down.clear()
    plan, _ = build(cluster, transport=mock)
    assert plan.traces[0].verdict == "rollback"
    assert ("node-3", "call", {"op": "inspect", "g": 2, "phase": "ANALYZE"}) in mock.log


def test_scripted_commands() -> None:
    mock = MockTransport({"n1": {}}, mirror=Path("/nonexistent"), command=lambda node, argv: Completed(3, "", "no"))
    assert mock.run("n1", ["logger", "x"], timeout=1).returncode == 3
    assert MockTransport({"n1": {}}, mirror=Path("/x")).run("n1", ["x"], timeout=1).returncode == 127
