"""Reconcile acting on signed overrides (SPEC §5): applied once, recorded, refused as a replay and in
the minority view — on a real simulated cluster with real ssh-keygen keys and a real git repo."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
from helpers import Invoke
from helpers.cluster import deletes, git, head, plant, positions
from helpers.overrides import signed_override, supervisors
from ruamel.yaml import YAML

from haios import controlfile
from haios.config import load_repo
from haios.errors import StorageError
from haios.ops import build, reconcile
from haios.overrides import apply as overrides_apply
from haios.overrides.verify import APPLIED_FILE, applied
from haios.recovery.journal import JOURNAL_DIR, Journal, find
from haios.sim.check import sim_check
from haios.sim.cloud import FakeCloud
from haios.sim.simulator import sim_dir
from haios.timefmt import utc
from haios.wal import RecordType, read_records

KEY = "key-node-1-0"


@pytest.fixture
def keys(cluster: Path, tmp_path: Path) -> dict[str, Path]:
    return supervisors(cluster, tmp_path)


_override = signed_override


def _journal(cluster: Path, trace: str) -> Journal:
    j = find(cluster, trace)
    assert j is not None
    return j


def _flapping(cluster: Path) -> str:
    """Two automatic rollbacks of (2, ANALYZE), then a third incident: AWAITING_ACK (SPEC §4.5)."""
    for attempt in range(3):
        plant(
            cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1} if attempt == 2 else None
        )
        result = reconcile(cluster)
    (outcome,) = result.outcomes
    assert (result.exit_code(), outcome.after) == (3, "AWAITING_ACK") and "flapping" in outcome.note
    return outcome.trace_id


def _override_marks(cluster: Path, node: str) -> list[str]:
    """The nonces of the overrides a node's WAL says were applied to it."""
    return [
        r.payload["outcome"]["nonce"]
        for r in read_records(cluster / f"nodes/{node}/wal")
        if r.type is RecordType.RECOVERY and r.payload["step"] == "override"
    ]


def test_acceptance_applied_once_then_refused_as_a_replay(cluster: Path, keys: dict[str, Path], cli: Invoke) -> None:
    trace = _flapping(cluster)
    path = cluster / "overrides" / f"{trace}.yaml"
    assert (
        cli("--repo", cluster, "override", "new", "--trace", trace, "--action", "resume", "--reason", "x").exit_code
        == 0
    )
    assert (
        cli("--repo", cluster, "override", "sign", path, "--principal", "alice", "--key", keys["alice"]).exit_code == 0
    )
    result = cli("--repo", cluster, "override", "verify", path)
    assert result.exit_code == 5 and "have 1 of 2 required" in result.stdout
    result = cli("--repo", cluster, "plan")  # one signature: nothing moves
    assert result.exit_code == 3 and "pending: have 1 of 2 required signatures" in result.stdout
    assert cli("--repo", cluster, "override", "sign", path, "--principal", "bob", "--key", keys["bob"]).exit_code == 0
    result = cli("--repo", cluster, "override", "verify", path)
    assert result.exit_code == 0 and "have 2 of 2 required" in result.stdout
    git(cluster, "add", "overrides")
    git(cluster, "commit", "-qm", "override: resume")

    result = cli("--repo", cluster, "plan")
    assert result.exit_code == 2, result.stdout
    assert f"trace {trace}  rollback (AWAITING_ACK, resumed)" in result.stdout
    assert "override: resume (overrides/" in result.stdout and "signed by alice, bob): applies" in result.stdout

    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 0, result.stdout
    assert f"trace {trace}  AWAITING_ACK -> CLEAN_EXIT" in result.stdout
    assert f"applied override: resume from overrides/{trace}.yaml" in result.stdout
    assert deletes(cluster) == {KEY: 1} and sim_check(cluster) == []
    assert positions(cluster) == {n: (1, "IDLE") for n in ("node-1", "node-2", "node-3")}

    # recorded: nonce and payload hash in status/, the grant spent, the nonce on every participant's WAL
    payload = str(YAML(typ="safe").load(path.read_text())["payload"])
    nonce = json.loads(payload)["nonce"]
    record = applied(cluster)
    assert record["policy_version"] == 2
    assert record["nonces"][nonce]["payload_sha256"] == hashlib.sha256(payload.encode()).hexdigest()
    assert (record["nonces"][nonce]["trace_id"], record["nonces"][nonce]["signers"]) == (trace, ["alice", "bob"])
    j = _journal(cluster, trace)
    assert j.grant is None and [o["nonce"] for o in j.overrides] == [nonce]
    assert [s["action"] for s in j.steps].count("override") == 1
    assert all(_override_marks(cluster, n) == [nonce] for n in ("node-1", "node-2", "node-3"))
    message = git(cluster, "log", "-1", "--format=%B")
    assert f"Haios-Override: {nonce}" in message and "(resume override)" in message.splitlines()[0]
    assert git(cluster, "show", "--name-only", "--format=", "HEAD").count(APPLIED_FILE) == 1

    # the same file again: refused as a replay, by the verifier and by reconcile (nothing more happens)
    result = cli("--repo", cluster, "override", "verify", path)
    assert result.exit_code == 5 and f"nonce {nonce} was already used (applied to {trace}" in result.stdout
    listed = json.loads(cli("--repo", cluster, "-o", "json", "override", "list").stdout)["overrides"]
    assert [(o["trace_id"], o["state"]) for o in listed] == [(trace, "applied")]
    commit = head(cluster)
    result = cli("--repo", cluster, "reconcile")
    assert (result.exit_code, head(cluster)) == (0, commit)


def _unforgiving_compensator(cluster: Path, failures: int) -> None:
    """The fake-cloud compensator with every failure final, and the next ``failures`` deletes failing."""
    pb = cluster / "playbooks/fakecloud-vm.yaml"
    pb.write_text(pb.read_text() + "non_retryable_exit_codes: [1]\n")
    git(cluster, "commit", "-qam", "tests: compensator failures are final")
    FakeCloud(sim_dir(cluster) / "cloud").set_faults({"fail": {"delete": {"fakecloud.vm": failures}}})


def test_resume_gives_a_blocked_compensator_one_more_attempt(cluster: Path, keys: dict[str, Path], cli: Invoke) -> None:
    _unforgiving_compensator(cluster, failures=2)
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    result = reconcile(cluster)
    (outcome,) = result.outcomes
    assert (result.exit_code(), outcome.after) == (3, "BLOCKED_COMPENSATOR")
    trace = outcome.trace_id
    before_apply = head(cluster)

    _override(cli, cluster, keys, trace, "resume", ("alice", "carol"))
    result = reconcile(cluster)  # one more attempt: it fails too, so the trace is blocked again
    (outcome,) = result.outcomes
    assert (result.exit_code(), outcome.before, outcome.after) == (3, "BLOCKED_COMPENSATOR", "BLOCKED_COMPENSATOR")
    assert outcome.override is not None and outcome.override["action"] == "resume"
    entry = json.loads(
        json.dumps(YAML(typ="safe").load(next((cluster / "status/sel/keys").glob("*.yaml")).read_text()))
    )
    assert [a["outcome"] for a in entry["attempts"]] == ["failed", "reopened", "failed"]
    assert _journal(cluster, trace).grant is None

    # the used approval cannot buy another attempt: refused as a replay, nothing runs
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 3
    assert f"override overrides/{trace}.yaml (resume trace {trace}): refused" in result.stdout
    assert "a replay" in result.stdout
    assert sum(1 for e in FakeCloud(sim_dir(cluster) / "cloud").ledger() if e["op"] == "delete") == 2

    # status/ restored from before the override (a revert, a backup): the nodes' WALs still refuse it
    first_nonce = _journal(cluster, trace).overrides[0]["nonce"]
    git(cluster, "checkout", before_apply, "--", "status")
    (cluster / APPLIED_FILE).unlink()
    plan, _ = build(cluster)
    (row,) = plan.overrides
    assert row["effect"] == "refused" and "their WALs say so" in row["why"]
    assert reconcile(cluster).exit_code() == 3
    assert sum(1 for e in FakeCloud(sim_dir(cluster) / "cloud").ledger() if e["op"] == "delete") == 2

    # a new approval (a new nonce) is a new decision: the cloud has recovered, the rollback finishes
    _override(cli, cluster, keys, trace, "resume", ("bob", "carol"))
    result = reconcile(cluster)
    assert result.exit_code() == 0 and result.outcomes[0].after == "CLEAN_EXIT"
    assert deletes(cluster) == {KEY: 1} and sim_check(cluster) == []
    second_nonce = _journal(cluster, trace).overrides[-1]["nonce"]
    assert second_nonce != first_nonce and second_nonce in applied(cluster)["nonces"]
    assert _override_marks(cluster, "node-1") == [first_nonce, second_nonce]  # the WAL forgets nothing


def test_abort_stops_the_trace_without_compensating(cluster: Path, keys: dict[str, Path], cli: Invoke) -> None:
    state = cluster / "desired/state.yaml"
    state.write_text(state.read_text().replace("  ANALYZE:\n    on_partial: auto", "  ANALYZE:\n    on_partial: hold"))
    git(cluster, "commit", "-qam", "tests: hold ANALYZE")
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    result = reconcile(cluster)
    assert result.exit_code() == 3 and "on_partial is hold" in result.outcomes[0].note
    trace = result.outcomes[0].trace_id

    _override(cli, cluster, keys, trace, "abort", ("alice", "bob"))
    plan = json.loads(cli("--repo", cluster, "-o", "json", "plan").stdout)
    (t,) = plan["traces"]
    assert t["verdict"] == "abort" and t["override"]["effect"] == "applies"
    assert [s["action"] for s in t["steps"]] == ["rollback", "rollback", "rollback"]
    assert t["steps"][0]["abandon"] == [KEY]

    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 0, result.stdout
    assert f"trace {trace}  AWAITING_ACK -> ABORTED  (aborted, 3 steps" in result.stdout
    assert deletes(cluster) == {}  # nothing compensated: the supervisors said so
    assert positions(cluster) == {n: (1, "IDLE") for n in ("node-1", "node-2", "node-3")}
    j = _journal(cluster, trace)
    assert (j.state, j.decision) == ("ABORTED", "abort") and f"left uncompensated: {KEY}" in j.reason
    ends = [r for r in read_records(cluster / "nodes/node-1/wal") if r.type is RecordType.ABORT_PHASE]
    assert ends[-1].payload["abandoned"] == [KEY]
    assert sim_check(cluster) == []  # the abandoned side effect is the signed decision, not a violation
    assert cli("--repo", cluster, "plan").exit_code == 0  # the barrier is released: nothing left to do
    assert "aborted g=2 ANALYZE (abort override)" in git(cluster, "log", "-1", "--format=%s")


def test_force_rollback_of_a_phase_that_could_roll_forward(cluster: Path, keys: dict[str, Path], cli: Invoke) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="prepare", effects={"node-2": 1})
    gossip = cluster / "nodes/node-3/gossip"
    now = utc(time.time())  # its agent keeps the file current: a stale one is no verdict
    body = {"node": "node-3", "peers": {}, "partition_status": "PARTITIONED", "since": now, "updated_at": now}
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    result = reconcile(cluster)
    assert result.exit_code() == 3 and result.outcomes[0].after == "BLOCKED"
    trace = result.outcomes[0].trace_id

    _override(cli, cluster, keys, trace, "force-rollback", ("bob", "carol"))
    plan, _ = build(cluster)  # still partitioned: the override waits, unused
    assert plan.overrides[0]["effect"] == "waiting" and "node-3 PARTITIONED" in plan.overrides[0]["why"]
    assert reconcile(cluster).exit_code() == 3 and applied(cluster)["nonces"] == {}

    body["partition_status"] = "NORMAL"
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    plan, _ = build(cluster)
    assert (
        plan.traces[0].verdict == "rollback" and "force-rollback override signed by bob, carol" in plan.traces[0].reason
    )
    result = reconcile(cluster)
    assert result.exit_code() == 0 and result.outcomes[0].after == "CLEAN_EXIT"
    assert positions(cluster) == {n: (1, "IDLE") for n in ("node-1", "node-2", "node-3")}  # not rolled forward
    assert deletes(cluster) == {"key-node-2-0": 1} and sim_check(cluster) == []


def test_minority_view_refuses_overrides(cluster: Path, keys: dict[str, Path], cli: Invoke) -> None:
    trace = _flapping(cluster)
    _override(cli, cluster, keys, trace, "resume", ("alice", "bob"))
    for n in ("node-2", "node-3"):
        (cluster / f"nodes/{n}").rename(cluster / f"nodes/{n}.away")
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 3
    assert f"nothing changed; overrides refused: overrides/{trace}.yaml" in result.stdout
    assert not (cluster / APPLIED_FILE).exists() and _journal(cluster, trace).overrides == []
    plan = json.loads(cli("--repo", cluster, "-o", "json", "plan").stdout)
    assert plan["minority"] and plan["overrides"][0]["effect"] == "refused"
    for n in ("node-2", "node-3"):  # the majority is back: now it applies
        (cluster / f"nodes/{n}.away").rename(cluster / f"nodes/{n}")
    assert reconcile(cluster).exit_code() == 0


def test_a_run_killed_between_the_grant_and_the_record_applies_it_once(
    cluster: Path, keys: dict[str, Path], cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = _flapping(cluster)
    _override(cli, cluster, keys, trace, "resume", ("alice", "bob"))

    def full_disk(*args: object, **kwargs: object) -> bool:
        raise StorageError(f"{cluster}/{APPLIED_FILE}: no space left on device")

    with monkeypatch.context() as m:
        m.setattr(overrides_apply, "record", full_disk)
        result = reconcile(cluster)
    assert result.exit_code() == 1 and "no space left" in result.outcomes[0].note
    assert _journal(cluster, trace).grant is not None and applied(cluster)["nonces"] == {}
    result = reconcile(cluster)  # the grant in the journal carries on; the record is finished
    assert result.exit_code() == 0 and result.outcomes[0].after == "CLEAN_EXIT"
    j = _journal(cluster, trace)
    assert len(j.overrides) == 1 and [s["action"] for s in j.steps].count("override") == 1
    assert len(applied(cluster)["nonces"]) == 1 and deletes(cluster) == {KEY: 1}


def test_overrides_that_cannot_act(cluster: Path, keys: dict[str, Path], cli: Invoke) -> None:
    """An unknown trace, a trace that needs no human, a malformed file: reported, never fatal."""
    _override(cli, cluster, keys, "2-analyze-000000000000", "resume", ("alice", "bob"))
    (cluster / "overrides/2-analyze-ffffffffffff.yaml").write_text("apiVersion: haios/v1\nkind: Override\n")
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    first = reconcile(cluster)  # rolls forward: its journal exists once it ran
    assert first.exit_code() == 0
    plan, _ = build(cluster)
    effects = {r["file"]: (r["effect"], r["why"]) for r in plan.overrides}
    assert effects["overrides/2-analyze-000000000000.yaml"] == (
        "not applicable",
        f"no trace 2-analyze-000000000000 in {JOURNAL_DIR}",
    )
    assert effects["overrides/2-analyze-ffffffffffff.yaml"][0] == "rejected"
    assert plan.exit_code() == 0

    trace = first.outcomes[0].trace_id
    _override(cli, cluster, keys, trace, "resume", ("alice", "bob"))
    plan, _ = build(cluster)
    row = next(r for r in plan.overrides if r["trace_id"] == trace)
    assert row["effect"] == "not applicable" and "has ended (CLEAN_EXIT)" in row["why"]


def test_resume_closes_a_trace_that_was_resolved_by_hand(cluster: Path, keys: dict[str, Path], cli: Invoke) -> None:
    from haios.node import Node

    state = cluster / "desired/state.yaml"
    state.write_text(state.read_text().replace("  ANALYZE:\n    on_partial: auto", "  ANALYZE:\n    on_partial: hold"))
    git(cluster, "commit", "-qam", "tests: hold ANALYZE")
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    result = reconcile(cluster)
    assert result.exit_code() == 3 and result.outcomes[0].after == "AWAITING_ACK"
    trace = result.outcomes[0].trace_id
    for n in ("node-1", "node-2", "node-3"):  # an operator aborted the phase on every node
        tx = Node(cluster / f"nodes/{n}").resume(2, "ANALYZE")
        tx.abort("aborted by hand")
        tx.close()
    assert reconcile(cluster).exit_code() == 3  # still waiting for a human's word
    _override(cli, cluster, keys, trace, "resume", ("alice", "carol"))
    result = reconcile(cluster)
    assert result.exit_code() == 0, result.to_json()
    assert (result.outcomes[0].before, result.outcomes[0].after, result.outcomes[0].steps) == (
        "AWAITING_ACK",
        "CLEAN_EXIT",
        0,
    )
    assert positions(cluster) == {n: (1, "IDLE") for n in ("node-1", "node-2", "node-3")}


def test_an_applied_override_stays_spent_after_status_is_reverted(
    cluster: Path, keys: dict[str, Path], cli: Invoke
) -> None:
    """status/ (the journal and applied.yaml) restored from before the override: the nodes' WALs keep
    its nonce, so the verifier, the plan and reconcile all refuse it as a replay."""
    trace = _flapping(cluster)
    before = head(cluster)
    path = _override(cli, cluster, keys, trace, "resume", ("alice", "bob"))
    assert cli("--repo", cluster, "reconcile").exit_code == 0
    git(cluster, "rm", "-rq", "status")
    git(cluster, "checkout", before, "--", "status")
    git(cluster, "add", "-A", "status")
    git(cluster, "commit", "-qm", "status/ restored from a backup of before the override")
    assert not (cluster / APPLIED_FILE).exists() and _journal(cluster, trace).state == "AWAITING_ACK"

    plan = cli("--repo", cluster, "plan")
    assert plan.exit_code == 3 and "a replay" in plan.stdout and "their WALs say so" in plan.stdout, plan.stdout
    commit = head(cluster)
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 3 and "a replay" in result.stdout, result.stdout
    assert all(len(_override_marks(cluster, n)) == 1 for n in ("node-1", "node-2", "node-3"))
    assert deletes(cluster) == {KEY: 1} and head(cluster) == commit  # nothing re-run, nothing to record
    listed = json.loads(cli("--repo", cluster, "-o", "json", "override", "list").stdout)["overrides"]
    assert [o["state"] for o in listed if o["file"].endswith(path.name)] != ["valid"]
    # the pull-request check says so too: from the last pass's record, or from the nodes themselves
    verified = cli("--repo", cluster, "override", "verify", path)
    assert verified.exit_code == 5 and "their WALs say so" in verified.stdout, verified.stdout
    shutil.rmtree(cluster / "status/observed")  # a fresh checkout (a CI job) has no record of a pass
    assert cli("--repo", cluster, "override", "verify", path).exit_code == 0  # nothing known here...
    verified = cli("--repo", cluster, "override", "verify", "--nodes", path)
    assert verified.exit_code == 5 and "applied on node-1, node-2, node-3" in verified.stdout, verified.stdout


def test_resume_of_a_hard_failed_trace_retries_its_abandoned_compensation_once(
    cluster: Path, keys: dict[str, Path], cli: Invoke
) -> None:
    """HARD_FAILED abandons the compensation of an expensive resource. plan lists it with the override
    that would retry it; a signed resume gives it one more attempt, recorded in the ledger and the
    journal once; the resource is deleted exactly once."""
    from helpers import at

    from haios.recovery.sel import SUCCEEDED, SelStore

    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    cloud = FakeCloud(sim_dir(cluster) / "cloud")
    cloud.set_faults({"fail": {"delete": {"fakecloud.vm": -1}}})
    now = time.time()
    for _ in range(40):  # cron runs at the times the runs say work is due, until it gives up (bounded)
        result = reconcile(cluster, clock=at(now))
        if result.outcomes and result.outcomes[0].after == "HARD_FAILED":
            break
        now = max(now + 60.0, result.next_due or 0.0)
    (outcome,) = result.outcomes
    assert outcome.after == "HARD_FAILED"
    trace = outcome.trace_id
    plan = json.loads(cli("--repo", cluster, "plan", "-o", "json").stdout)
    (left,) = plan["abandoned"]
    assert left["trace_id"] == trace and left["abandoned"] == [
        {"node": "node-1", "key": KEY, "compensator": "fakecloud-vm"}
    ]
    assert f"haios override new --trace {trace} --action resume" in left["retry"]
    text = cli("--repo", cluster, "plan").stdout
    assert f"HARD_FAILED {trace}" in text and f"{KEY} on node-1" in text and f"--repo {cluster}" in text

    cloud.set_faults({})  # the cloud works again; a human signs a resume for the trace
    _override(cli, cluster, keys, trace, "resume", ("alice", "bob"))
    later = now + 600
    planned, _ = build(cluster, now=later)
    (retry,) = [t for t in planned.traces if t.trace_id == trace]
    assert retry.verdict == "retry" and [s["key"] for s in retry.steps] == [KEY]
    assert planned.abandoned == [] and planned.exit_code() == 2
    done = reconcile(cluster, clock=at(later))
    assert done.exit_code() == 0, json.dumps(done.to_json()["traces"])
    assert done.outcomes[0].after == "CLEAN_EXIT"
    entry = SelStore(cluster, load_repo(cluster).thresholds).entry(KEY)
    assert entry is not None and entry.state == SUCCEEDED
    assert [a["outcome"] for a in entry.attempts][-3:] == ["abandoned", "reopened", "ok"]
    assert deletes(cluster) == {KEY: 1}
    j = _journal(cluster, trace)
    assert [s["outcome"] for s in j.steps if s["action"] == "compensate" and s.get("key") == KEY][-1] == "compensated"
    assert len(j.overrides) == 1 and not j.abandoned
    # once: the next run has nothing to do and deletes nothing
    again = reconcile(cluster, clock=at(later + 60))
    assert again.exit_code() == 0 and deletes(cluster) == {KEY: 1}
    assert json.loads(cli("--repo", cluster, "plan", "-o", "json").stdout)["abandoned"] == []
