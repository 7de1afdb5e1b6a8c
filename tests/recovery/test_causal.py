"""Causal order in recovery: compensations across participants in reverse vector-clock order, shown
in the plan; file-level clocks for the files of a schema that sets ``requires_causal``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import Invoke
from helpers.cluster import git, wait_for_phi

from haios import controlfile
from haios.node import Node
from haios.node.manifest import MANIFEST, file_sha256
from haios.recovery.journal import find
from haios.sim.cloud import FakeCloud
from haios.sim.simulator import sim_dir
from haios.vclock import VClock

EFFECT = {"amount": 1, "currency": "EUR"}


def _effect(cloud: FakeCloud, tx: object, node: str, key: str) -> None:
    vm = f"vm-{key}"
    tx.side_effect(key, "fakecloud.vm", {"resource": vm, "cloud": "../../.sim/cloud"}, "fakecloud-vm", EFFECT)  # type: ignore[attr-defined]
    cloud.create("fakecloud.vm", vm, key, node)
    tx.side_effect_done(key, {"ok": True})  # type: ignore[attr-defined]


def test_compensations_run_in_reverse_causal_order_across_nodes(cluster: Path, cli: Invoke) -> None:
    """a1 (node-1) → b1 (node-2, after it heard of a1) → a2 (node-1, after it heard of b1); c1 (node-3)
    is concurrent with all of them. Per node alone, node-1's a2 then a1 then node-2's b1 would undo a1
    while b1, which built on it, still stands."""
    cloud = FakeCloud(sim_dir(cluster) / "cloud")
    parts = ["node-1", "node-2", "node-3"]
    txs = {n: Node(cluster / "nodes" / n).begin(2, "ANALYZE", participants=parts, trace_id="t-causal") for n in parts}
    _effect(cloud, txs["node-1"], "node-1", "a1")
    txs["node-2"].observe(txs["node-1"].vc)
    _effect(cloud, txs["node-2"], "node-2", "b1")
    txs["node-1"].observe(txs["node-2"].vc)
    _effect(cloud, txs["node-1"], "node-1", "a2")
    _effect(cloud, txs["node-3"], "node-3", "c1")
    for tx in txs.values():
        tx.close()  # begun, never PREPAREd: a rollback once the Φ timeout passes
    wait_for_phi(cluster)

    planned = cli("--repo", cluster, "--output", "json", "plan")
    assert planned.exit_code == 2, planned.stdout + planned.stderr
    (trace,) = json.loads(planned.stdout)["traces"]
    keys = [s["key"] for s in trace["steps"] if s["action"] == "compensate"]
    assert sorted(keys) == ["a1", "a2", "b1", "c1"]
    causal = [k for k in keys if k != "c1"]
    assert causal == ["a2", "b1", "a1"]  # reverse causal order, across the nodes
    assert all(s["vc"] for s in trace["steps"] if s["action"] == "compensate")  # each step carries its clock
    b1 = next(s for s in trace["steps"] if s.get("key") == "b1")
    a1 = next(s for s in trace["steps"] if s.get("key") == "a1")
    assert VClock(a1["vc"]).happened_before(VClock(b1["vc"]))

    text = cli("--repo", cluster, "plan")
    lines = [line for line in text.stdout.splitlines() if " compensate " in line]
    assert [re.search(r"compensate (\w+):", line).group(1) for line in lines] == keys  # type: ignore[union-attr]
    assert all(re.search(r"\[clock (\S+:\d+ ?)+\]$", line) for line in lines), lines

    done = cli("--repo", cluster, "reconcile")
    assert done.exit_code == 0, done.stdout + done.stderr
    journal = find(cluster, trace["trace_id"])
    assert journal is not None
    assert [s["key"] for s in journal.steps if s["action"] == "compensate"] == keys  # executed as planned
    assert [s["action"] for s in journal.steps][-3:] == ["rollback"] * 3


def _causal_schema(cluster: Path, cli: Invoke, causal: bool) -> None:
    """The schema committed, and pushed to the nodes by a reconcile (each node checks the policy)."""
    schema = {"x-haios-paths": ["analyze/*"], "type": "string", "requires_causal": causal}
    (cluster / "schemas").mkdir(exist_ok=True)
    (cluster / "schemas/conf.schema.json").write_text(json.dumps(schema))
    git(cluster, "add", "schemas")
    git(cluster, "commit", "-qm", "tests: analyze/ files in causal order")
    pushed = cli("--repo", cluster, "-o", "json", "reconcile")
    assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
    for n in ("node-1", "node-2", "node-3"):
        policy, _ = controlfile.read_mapping(cluster / "nodes" / n / "policy")
        assert policy["data_schemas"][0]["requires_causal"] is causal


def _replay_over_newer(cluster: Path) -> str:
    """node-1 PREPAREd (g=2, ANALYZE) writing analyze/f.conf; node-2 and node-3 committed it. Then
    node-1's file is replaced by a version whose clock is after the phase's INTENT, as a later
    transition would leave it: rolling node-1 forward would replay the older version over it."""
    parts = ["node-1", "node-2", "node-3"]
    for n in parts:
        tx = Node(cluster / "nodes" / n).begin(2, "ANALYZE", participants=parts, trace_id="t-file")
        tx.intent("analyze/f.conf", f"from {n}\n".encode())
        tx.prepare()
        if n != "node-1":
            tx.commit()
        else:
            intent_vc = tx.intents[0]["vc"]
        tx.close()
    root = cluster / "nodes/node-1"
    newer = b"newer\n"
    (root / "data/analyze/f.conf").write_bytes(newer)
    later = VClock(intent_vc).tick("node-1").tick("node-1").to_json()
    body = {"files": {"analyze/f.conf": [1, file_sha256(root / "data/analyze/f.conf"), len(newer), later]}}
    cf = controlfile.read(root / MANIFEST)
    controlfile.write(root / MANIFEST, json.dumps(body) + "\n", expected_version=cf.version)
    wait_for_phi(cluster)
    return newer.decode()


def test_a_replay_never_puts_a_causally_older_version_over_a_newer_one(cluster: Path, cli: Invoke) -> None:
    _causal_schema(cluster, cli, True)
    newer = _replay_over_newer(cluster)
    done = cli("--repo", cluster, "reconcile")
    assert done.exit_code == 3, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "data/analyze/f.conf: the replayed version (clock " in out
    assert "happened before the version it holds (clock " in out
    assert (cluster / "nodes/node-1/data/analyze/f.conf").read_text() == newer  # nothing overwritten


def test_without_requires_causal_the_version_check_decides(cluster: Path, cli: Invoke) -> None:
    _causal_schema(cluster, cli, False)
    newer = _replay_over_newer(cluster)
    done = cli("--repo", cluster, "reconcile")
    assert done.exit_code != 0
    out = done.stdout + done.stderr
    assert "happened before" not in out and "version conflict" in out
    assert (cluster / "nodes/node-1/data/analyze/f.conf").read_text() == newer


def test_validate_refuses_a_requires_causal_that_is_not_a_boolean(cluster: Path, cli: Invoke) -> None:
    (cluster / "schemas").mkdir(exist_ok=True)
    (cluster / "schemas/conf.schema.json").write_text(json.dumps({"x-haios-paths": ["a/*"], "requires_causal": "yes"}))
    done = cli("--repo", cluster, "validate")
    assert done.exit_code == 1
    assert "schemas/conf.schema.json" in done.stdout + done.stderr and "requires_causal" in done.stdout + done.stderr
