"""A policy file that is not valid blocks only the transitions that need it.

Two half-done transitions: g=2 ANALYZE, PREPAREd on node-1 and node-2 and committed on node-3 (it
rolls forward and needs no policy file), and g=2 BLUEPRINT on node-3 alone with a fake-cloud VM
created (it rolls back, running the compensator ``fakecloud-vm`` under the budget). With one file
broken, ``plan`` names it, the BLUEPRINT trace waits untouched (verdict ``unreadable``, exit 3),
the ANALYZE trace is recovered, ``doctor`` goes on diagnosing; restored, everything is recovered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Invoke
from helpers.cluster import deletes, git, head, plant, positions, wait_for_phi

from haios.node import Node
from haios.ops import build
from haios.ops.doctor import run_doctor
from haios.recovery.journal import JOURNAL_DIR
from haios.sim.cloud import FakeCloud
from haios.sim.simulator import sim_dir

BROKEN = b"apiVersion: haios/v1\nkind: [this is not, a valid file\n"


def _two_transitions(cluster: Path, currency: str = "EUR", amount: float = 5) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="commit", settle=False)
    tx = Node(cluster / "nodes/node-3").begin(2, "BLUEPRINT", participants=["node-3"], trace_id="phase-2-blueprint")
    params = {"resource": "vm-blueprint", "cloud": "../../.sim/cloud"}
    tx.side_effect("key-blueprint", "fakecloud.vm", params, "fakecloud-vm", {"amount": amount, "currency": currency})
    FakeCloud(sim_dir(cluster) / "cloud").create("fakecloud.vm", "vm-blueprint", "key-blueprint", "node-3")
    tx.side_effect_done("key-blueprint", {"ok": True})
    tx.close()
    wait_for_phi(cluster)


def _verdicts(cluster: Path) -> dict[str, str]:
    return {t.phase: t.verdict for t in build(cluster)[0].traces}


def _journals(cluster: Path) -> list[str]:
    directory = cluster / JOURNAL_DIR
    return sorted(p.name for p in directory.glob("*.yaml")) if directory.is_dir() else []


def _break(cluster: Path, rel: str, data: bytes = BROKEN) -> bytes | None:
    """``data`` at ``rel``, committed; what was there before (None: nothing)."""
    path = cluster / rel
    old = path.read_bytes() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    git(cluster, "add", "-A")
    git(cluster, "commit", "-qm", f"a broken {rel}")
    return old


def _restore(cluster: Path, rel: str, old: bytes | None) -> None:
    if old is None:
        (cluster / rel).unlink()
    else:
        (cluster / rel).write_bytes(old)
    git(cluster, "add", "-A")
    git(cluster, "commit", "-qm", f"{rel} restored")


@pytest.mark.parametrize(
    "rel", ["playbooks/fakecloud-vm.yaml", "policies/budget.yaml", "status/sel/breakers.yaml", "status/sel/swings.yaml"]
)
def test_a_broken_file_blocks_only_the_transition_that_needs_it(cluster: Path, cli: Invoke, rel: str) -> None:
    _two_transitions(cluster)
    assert _verdicts(cluster) == {"ANALYZE": "forward", "BLUEPRINT": "rollback"}
    old = _break(cluster, rel)

    plan = cli("--repo", cluster, "-o", "json", "plan")
    assert plan.exit_code == 3, plan.output
    data = json.loads(plan.stdout)
    assert list(data["unreadable"]) == [rel]
    traces = {t["phase"]: t for t in data["traces"]}
    assert traces["ANALYZE"]["verdict"] == "forward"
    blocked = traces["BLUEPRINT"]
    assert (blocked["verdict"], blocked["state"], blocked["steps"]) == ("unreadable", "INTERRUPTED", [])
    assert blocked["reason"].startswith("needs ") and rel in blocked["reason"].split(": ")[0]
    text = cli("--repo", cluster, "plan")
    assert f"cannot use {rel}:" in text.stdout and "g=2 BLUEPRINT" in text.stdout

    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 3, result.output
    assert "g=2 ANALYZE" in result.stdout and "CLEAN_EXIT" in result.stdout
    assert positions(cluster)["node-1"] == (2, "ANALYZE")  # rolled forward
    assert positions(cluster)["node-3"] == (2, "ANALYZE")
    assert _verdicts(cluster) == {"BLUEPRINT": "unreadable"}  # still open on node-3, untouched
    assert [j for j in _journals(cluster) if "blueprint" in j] == []  # not even a journal was opened
    assert deletes(cluster) == {}  # the compensator never ran
    committed = head(cluster)
    again = cli("--repo", cluster, "reconcile")
    assert again.exit_code == 3 and head(cluster) == committed  # a cron run that changes nothing commits nothing

    kinds = {(f.kind, f.evidence.get("file")) for f in run_doctor(cluster).findings}
    assert ("status_unreadable" if rel.startswith("status/") else "config", rel) in kinds
    assert any(kind not in ("config", "status_unreadable") for kind, _ in kinds)  # the cluster is still diagnosed

    _restore(cluster, rel, old)
    wait_for_phi(cluster)
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 0, result.output
    assert deletes(cluster) == {"key-blueprint": 1}
    assert positions(cluster)["node-3"] == (2, "ANALYZE")  # rolled back to its last committed phase
    assert cli("--repo", cluster, "plan").exit_code == 0


@pytest.mark.parametrize("currency", ["EUR", "USD"])
def test_broken_rates_block_only_a_compensation_in_another_currency(cluster: Path, currency: str) -> None:
    _two_transitions(cluster, currency)
    _break(cluster, "policies/fx.yaml")
    expected = "rollback" if currency == "EUR" else "unreadable"  # the region's limit is in EUR
    assert _verdicts(cluster) == {"ANALYZE": "forward", "BLUEPRINT": expected}


@pytest.mark.parametrize("rel", ["policies/rbac.yaml", "status/overrides/applied.yaml"])
def test_what_judges_overrides_broken_blocks_only_the_trace_an_override_names(
    cluster: Path, cli: Invoke, rel: str
) -> None:
    _two_transitions(cluster, amount=5000)  # over the cost cap: BLUEPRINT waits for a human's override
    assert cli("--repo", cluster, "reconcile").exit_code == 3
    (trace,) = build(cluster)[0].traces
    assert (trace.phase, trace.verdict, trace.state) == ("BLUEPRINT", "needs_human", "AWAITING_ACK")
    made = cli("--repo", cluster, "override", "new", "--trace", trace.trace_id, "--action", "abort", "--reason", "x")
    assert made.exit_code == 0, made.output
    git(cluster, "add", "-A")
    git(cluster, "commit", "-qm", "an override, not signed yet")
    _break(cluster, rel)
    plan, _ = build(cluster)
    assert {t.phase: t.verdict for t in plan.traces} == {"BLUEPRINT": "unreadable"}
    assert rel in plan.unreadable
    (row,) = plan.overrides
    assert row["effect"] == "rejected" and row["why"].startswith("cannot be judged: ") and rel in row["why"]
    assert cli("--repo", cluster, "reconcile").exit_code == 3
    assert _verdicts(cluster) == {"BLUEPRINT": "unreadable"} and deletes(cluster) == {}
    (cluster / f"overrides/{trace.trace_id}.yaml").unlink()
    assert _verdicts(cluster) == {"BLUEPRINT": "needs_human"}  # no override names it: the file is not needed


def test_a_broken_membership_record_holds_every_transition_and_is_kept(cluster: Path, cli: Invoke) -> None:
    _two_transitions(cluster)
    record = cluster / "status/membership.yaml"
    record.parent.mkdir(exist_ok=True)
    record.write_bytes(b"schema: haios-membership/v1\nnodes: {node-2: {isolated_since: yesterday}}\n")
    git(cluster, "add", "-A")
    git(cluster, "commit", "-qm", "a hand-edited membership record")
    committed = head(cluster)
    result = cli("--repo", cluster, "-o", "json", "reconcile")
    assert result.exit_code == 3, result.output
    data = json.loads(result.stdout)
    assert {t["verdict"] for t in data["traces"]} == {"unreadable"}
    assert list(data["unreadable"]) == ["status/membership.yaml"]
    assert head(cluster) == committed and _journals(cluster) == []
    assert record.read_bytes().startswith(b"schema: haios-membership/v1\nnodes: {node-2")  # kept as it was
    findings = run_doctor(cluster).findings
    assert any(f.kind == "status_unreadable" and f.evidence.get("file") == "status/membership.yaml" for f in findings)
    assert any(f.kind not in ("status_unreadable", "config") for f in findings)
    status = cli("--repo", cluster, "status")
    assert status.exit_code == 0 and "evictions unknown" in status.stdout


def test_a_broken_data_schema_or_unknown_policy_file_blocks_no_transition(cluster: Path, cli: Invoke) -> None:
    _two_transitions(cluster)
    (cluster / "schemas").mkdir(exist_ok=True)
    (cluster / "schemas/broken.schema.json").write_text("{not json")
    (cluster / "policies/extra.yaml").write_text("x: 1\n")
    git(cluster, "add", "-A")
    git(cluster, "commit", "-qm", "two files nothing in a recovery needs")
    plan, _ = build(cluster)
    assert sorted(plan.unreadable) == ["policies/extra.yaml", "schemas/broken.schema.json"]
    assert {t.phase: t.verdict for t in plan.traces} == {"ANALYZE": "forward", "BLUEPRINT": "rollback"}
    assert cli("--repo", cluster, "reconcile").exit_code == 0
    assert deletes(cluster) == {"key-blueprint": 1}


@pytest.mark.parametrize("rel", ["haios.yaml", "desired/state.yaml", "policies/thresholds.yaml"])
def test_a_broken_file_every_decision_needs_stops_the_run_naming_it(cluster: Path, cli: Invoke, rel: str) -> None:
    _two_transitions(cluster)
    _break(cluster, rel)
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 1 and rel in result.stderr and "Traceback" not in result.output
    assert deletes(cluster) == {} and _journals(cluster) == []
