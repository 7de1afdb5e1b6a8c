"""The detectors as pure functions of (observations, now): a positive and a negative case each."""

from __future__ import annotations

from haios.detect.detectors import NodeObservation, PhaseSummary, Thresholds, run_detectors
from haios.detect.phi import Estimators
from haios.timefmt import utc

NOW = 1_790_000_000.0
TH = Thresholds(heartbeat_interval=15, unhealthy_after=3, partition_window=45)


def _obs(node: str, **kw: object) -> NodeObservation:
    return NodeObservation(node, heartbeat={"node": node, "seq": 1, "wall_time": utc(NOW - 5)}, **kw)  # type: ignore[arg-type]


def _phase(
    g: int = 1,
    phase: str = "ANALYZE",
    *,
    begin: float,
    prepared: bool = False,
    ended: str | None = None,
    end: float | None = None,
) -> PhaseSummary:
    return PhaseSummary(g, phase, "t", ("n1", "n2"), begin, 1, prepared, ended, end, 2 if ended else None)


def kinds(obs: dict[str, NodeObservation], now: float = NOW, last_pass: float | None = None) -> list[str]:
    result = run_detectors(obs, Estimators(), TH, now, last_pass=last_pass)
    return sorted(f"{f.kind}:{','.join(f.nodes)}" for f in result.findings)


def test_wal_gap_after_timeout_only() -> None:
    timeout = Estimators()["ANALYZE"].timeout()
    young = {"n1": _obs("n1", phases={(1, "ANALYZE"): _phase(begin=NOW - timeout + 1)})}
    old = {"n1": _obs("n1", phases={(1, "ANALYZE"): _phase(begin=NOW - timeout - 1)})}
    assert kinds(young) == []
    assert kinds(old) == ["wal_gap:n1"]
    finding = run_detectors(old, Estimators(), TH, NOW, last_pass=None).findings[0]
    assert finding.evidence["timeout_s"] == round(timeout, 3) and finding.evidence["phi"] > 1


def test_exec_sla_only_past_sla_and_not_for_a_gap() -> None:
    status = {
        1: {
            "g": 1,
            "phase": "IDLE",
            "status": "IN_PROGRESS",
            "started_at": utc(NOW - 100),
            "updated_at": utc(NOW - 100),
        }
    }
    th = Thresholds(sla={"IDLE": 50.0})
    stuck = {"n1": _obs("n1", exec_status=status)}
    assert [f.kind for f in run_detectors(stuck, Estimators(), th, NOW, last_pass=None).findings] == ["exec_sla"]
    th_ok = Thresholds(sla={"IDLE": 500.0})
    assert run_detectors(stuck, Estimators(), th_ok, NOW, last_pass=None).findings == []


def test_heartbeat_loss_over_three_intervals() -> None:
    fresh = {"n1": _obs("n1")}
    stale = {"n1": NodeObservation("n1", heartbeat={"node": "n1", "seq": 9, "wall_time": utc(NOW - 46)})}
    never = {"n1": NodeObservation("n1", records=12)}  # it logged phases, and never beat
    fresh_root = {"n1": NodeObservation("n1")}  # it has done nothing yet: what to do next
    assert kinds(fresh) == []
    assert kinds(stale) == ["heartbeat_loss:n1"]
    assert kinds(never) == ["heartbeat_loss:n1"]
    assert kinds(fresh_root) == ["heartbeat_never:n1"]
    (note,) = run_detectors(fresh_root, Estimators(), TH, NOW, last_pass=None).findings
    assert note.severity == "info" and note.summary == "n1 has never sent a heartbeat: start its heartbeat"


def test_partial_commit_names_the_lagging_participant() -> None:
    timeout = Estimators()["ANALYZE"].timeout()
    committed = _phase(begin=NOW - 100, prepared=True, ended="COMMIT_PHASE", end=NOW - timeout - 5)
    lagging = _phase(begin=NOW - 100, prepared=True)
    obs = {"n1": _obs("n1", phases={(1, "ANALYZE"): committed}), "n2": _obs("n2", phases={(1, "ANALYZE"): lagging})}
    result = run_detectors(obs, Estimators(), TH, NOW, last_pass=None)
    assert [f.kind for f in result.findings] == ["partial_commit"]  # the wal_gap of n2 is the same fault
    f = result.findings[0]
    assert f.nodes == ("n2",) and f.evidence["missing"] == {"n2": "PREPARE present, no COMMIT_PHASE"}
    assert "reconcile" in f.fix and "forward" in f.fix
    both = {"n1": obs["n1"], "n2": _obs("n2", phases={(1, "ANALYZE"): committed})}
    assert kinds(both) == []
    recent = {
        "n1": _obs(
            "n1", phases={(1, "ANALYZE"): _phase(begin=NOW - 2, prepared=True, ended="COMMIT_PHASE", end=NOW - 1)}
        ),
        "n2": _obs("n2", phases={(1, "ANALYZE"): _phase(begin=NOW - 2)}),
    }
    assert kinds(recent) == []  # within the timeout: still in flight


def test_partition_majority_silent() -> None:
    gossip_bad = {
        "node": "n1",
        "peers": {"n2": utc(NOW - 100), "n3": None},
        "partition_status": "NORMAL",
        "since": utc(NOW),
    }
    gossip_ok = {
        "node": "n1",
        "peers": {"n2": utc(NOW - 100), "n3": utc(NOW - 1)},
        "partition_status": "NORMAL",
        "since": utc(NOW),
    }
    assert kinds({"n1": _obs("n1", gossip=gossip_bad)}) == ["partition:n1"]
    assert kinds({"n1": _obs("n1", gossip=gossip_ok)}) == []


def test_local_pause_rule_holds_back_only_what_the_observer_measured() -> None:
    timeout = Estimators()["ANALYZE"].timeout()
    killed = NodeObservation(
        "n1",
        heartbeat={"node": "n1", "seq": 9, "wall_time": utc(NOW - 300)},
        phases={(1, "ANALYZE"): _phase(begin=NOW - 300 - timeout)},
    )
    paused = run_detectors({"n1": killed}, Estimators(), TH, NOW, last_pass=NOW - 200)
    assert not paused.convicted and "held back" in paused.reason
    by_kind = {f.kind: f for f in paused.findings}
    assert set(by_kind) == {"wal_gap", "heartbeat_loss"}
    assert by_kind["heartbeat_loss"].observer_measured  # the silence this observer measured: held back
    assert not by_kind["wal_gap"].observer_measured  # the node's own WAL: proof whenever the observer looked
    regular = run_detectors({"n1": killed}, Estimators(), TH, NOW, last_pass=NOW - 30)
    assert regular.convicted


def test_stale_gossip_is_its_own_finding_not_a_partition() -> None:
    stale = {
        "peers": {"n2": None, "n3": None},
        "partition_status": "PARTITIONED",
        "since": utc(NOW - 600),
        "updated_at": utc(NOW - 600),
    }
    fresh = {**stale, "updated_at": utc(NOW - 5)}
    assert kinds({"n1": _obs("n1", gossip=fresh)}) == ["partition:n1"]
    assert kinds({"n1": _obs("n1", gossip=stale)}) == ["gossip_stale:n1"]
    (finding,) = run_detectors({"n1": _obs("n1", gossip=stale)}, Estimators(), TH, NOW, last_pass=None).findings
    assert finding.summary == "gossip not updated for 600 s (it still says PARTITIONED): is the agent running?"
    assert finding.severity == "warning" and finding.observer_measured
    # a node whose heartbeat stopped too: heartbeat_loss says it, once
    dead = NodeObservation("n1", heartbeat={"node": "n1", "seq": 1, "wall_time": utc(NOW - 600)}, gossip=stale)
    assert kinds({"n1": dead}) == ["heartbeat_loss:n1"]
    # a NORMAL file nobody rewrites any more misleads nobody: no finding
    assert kinds({"n1": _obs("n1", gossip={**stale, "partition_status": "NORMAL"})}) == []
