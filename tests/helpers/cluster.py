"""Half-done transitions planted in a simulated cluster, for the recovery tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from haios import controlfile
from haios.node import Node
from haios.sim.cloud import FakeCloud
from haios.sim.simulator import sim_dir

from . import subprocs


def git(directory: Path, *args: str) -> str:
    """Run git in ``directory`` with an identity of its own (test machines may have none)."""
    cmd = ["git", "-c", "user.name=haios tests", "-c", "user.email=tests@haios.invalid", *args]
    return subprocs.run(cmd, cwd=directory, capture_output=True, text=True, check=True).stdout


def quick_cluster(directory: Path, nodes: int) -> Path:
    """``sim init`` with a 10-ms ANALYZE prior (so Φ timeouts expire at once), committed."""
    from haios.sim.simulator import provision_policy, sim_init

    sim_init(directory, nodes)
    thresholds = directory / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("    ANALYZE: 500ms", "    ANALYZE: 10ms"))
    git(directory, "commit", "-qam", "tests: a short ANALYZE prior")
    provision_policy(directory, head(directory))  # the nodes hold what was committed, as after a reconcile
    return directory


def positions(directory: Path) -> dict[str, tuple[int, str]]:
    """Where each node of the 3-node test cluster stands: (g, phase) from its state.txt."""
    out = {}
    for n in ("node-1", "node-2", "node-3"):
        state, _ = controlfile.read_mapping(directory / f"nodes/{n}/state.txt")
        out[n] = (state["g"], state["ph"])
    return out


def began(directory: Path) -> float:
    """When the cluster's nodes wrote their first WAL record (a shared fixture is as old as the session)."""
    from haios.wal import read_records

    return min(float(r.payload["ts"]) for root in (directory / "nodes").iterdir() for r in read_records(root / "wal"))


def refresh_heartbeats(directory: Path) -> None:
    """Every node beats now: a copy of a session-old cluster must not look as if its agents stopped."""
    from haios.node.heartbeat import beat

    for root in sorted((directory / "nodes").iterdir()):
        if (root / "heartbeat").exists():
            beat(root, root.name)


def beat_at(directory: Path, t: float) -> Callable[[], float]:
    """The clock of a run at ``t``, after every node's agent beat at ``t`` (a heartbeat older than
    the heartbeat window is an agent down, and an ``agent_down`` alert)."""
    from haios.node.heartbeat import beat

    for root in sorted((directory / "nodes").iterdir()):
        if (root / "heartbeat").exists():
            beat(root, root.name, t)
    return lambda: t


def gossip_at(directory: Path, t: float) -> Callable[[], float]:
    """The clock of a reconcile at ``t``, after each node's agent rewrote its gossip at ``t`` (a gossip
    file not rewritten within the heartbeat window is stale and decides nothing)."""
    from haios.timefmt import utc

    for path in sorted((directory / "nodes").glob("*/gossip")):
        body, version = controlfile.read_mapping(path)
        controlfile.write_mapping(path, {**body, "updated_at": utc(t)}, expected_version=version)
    return lambda: t


def head(directory: Path) -> str:
    return subprocs.run(
        ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True
    ).stdout.strip()


def plant(
    directory: Path,
    *,
    effects: dict[str, int] | None = None,
    settle: bool = True,
    cost: dict[str, object] | None = None,
    resource: str | None = None,
    **how: str,
) -> Path:
    """``plant(cluster, node_1="commit", node_2="prepare", node_3="begin", effects={"node-1": 2})``.

    Each node takes (g=2, ANALYZE) as far as its word says ("none": not at all); ``effects`` creates
    that many real fake-cloud resources as side effects on a node, each costing ``cost`` (default
    12 EUR), named ``resource`` when given (else one name per node and index). Unless ``settle`` is False, it
    returns once the Φ timeout of the half-done transition has expired (the test cluster's ANALYZE
    prior is 10 ms, so that is soon).
    """
    cloud = FakeCloud(sim_dir(directory) / "cloud")
    participants = sorted(n.replace("_", "-") for n in how)
    for arg, word in sorted(how.items()):
        name = arg.replace("_", "-")
        if word == "none":
            continue
        root = directory / "nodes" / name
        tx = Node(root).begin(2, "ANALYZE", participants=participants, trace_id="phase-2-analyze")
        tx.intent(f"analyze/{name}.conf", f"planted on {name}\n".encode())
        for i in range((effects or {}).get(name, 0)):
            key, vm = f"key-{name}-{i}", resource or f"vm-{name}-{i}"
            params = {"resource": vm, "cloud": "../../.sim/cloud"}
            tx.side_effect(key, "fakecloud.vm", params, "fakecloud-vm", cost or {"amount": 12, "currency": "EUR"})
            cloud.create("fakecloud.vm", vm, key, name)
            tx.side_effect_done(key, {"ok": True})
        if word in ("prepare", "commit"):
            tx.prepare()
        if word == "commit":
            tx.commit()
        tx.close()
    if settle:
        wait_for_phi(directory)
    return directory


def wait_for_phi(directory: Path, limit: float = 15.0) -> None:
    """Until no trace of the plan is waiting for its Φ timeout (bounded)."""
    from haios.ops import build

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not [t for t in build(directory)[0].traces if t.verdict == "wait"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{directory}: still waiting for the Φ timeout after {limit} s")


def deletes(directory: Path) -> dict[str, int]:
    """Successful fake-cloud deletions per idempotency key."""
    counts: dict[str, int] = {}
    for entry in FakeCloud(sim_dir(directory) / "cloud").ledger():
        if entry["op"] == "delete" and entry.get("ok"):
            counts[entry["key"]] = counts.get(entry["key"], 0) + 1
    return counts
