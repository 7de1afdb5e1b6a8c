"""The detectors of SPEC §3, each a pure function of (observations, now).

=====================  ==========================================================  ============================
detector               mechanism                                                   detects
=====================  ==========================================================  ============================
``wal_gap``            BEGIN_PHASE without COMMIT/ABORT after the Φ timeout        crash or kill mid-phase
``exec_sla``           ``exec_status_<g>`` IN_PROGRESS past the phase SLA           a stuck executor
``heartbeat_loss``     heartbeat older than ``unhealthy_after`` intervals          silent node or agent death
``partial_commit``     one participant finished (g, phase), others not within Φ    partial commit across nodes
``partition``          a majority of peers silent past the window (gossip)         network split
``left_out``           the others committed (g, phase) in an attempt without it     a member left behind
=====================  ==========================================================  ============================

The local-pause rule (Cassandra's), narrowly: when the previous pass is older than the heartbeat
window, the observer itself may have been stalled, and a silence *it* measured (a heartbeat's age, a
peer's silence by its clock) may be its own; such findings are held back on that pass
(``observer_measured``, shown as held back, never as healthy). Evidence the nodes recorded
themselves — a BEGIN_PHASE older than the Φ timeout, a commit on one participant and not on another,
an executor past its SLA, a node's own PARTITIONED — convicts whenever the observer last looked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.model import phase_order
from ..node.heartbeat import gossip_age
from ..timefmt import parse_utc
from .phi import Estimators


@dataclass(frozen=True)
class PhaseSummary:
    """What a node's WAL says of its latest attempt at (g, phase)."""

    g: int
    phase: str
    trace_id: str
    participants: tuple[str, ...]
    begin_ts: float
    begin_lamport: int
    prepared: bool = False
    ended: str | None = None  # "COMMIT_PHASE" | "ABORT_PHASE"
    end_ts: float | None = None
    end_lamport: int | None = None
    effects: tuple[str, ...] = ()  # idempotency keys of its SIDE_EFFECT records
    compensated: tuple[str, ...] = ()  # keys with a COMPENSATED record
    abandoned: tuple[str, ...] = ()  # keys a HARD_FAILED rollback gave up on (its ABORT_PHASE says so)
    last_ts: float | None = None  # its latest BEGIN, SIDE_EFFECT, PREPARE or end record: its last sign of life

    @property
    def uncompensated(self) -> tuple[str, ...]:
        return tuple(k for k in self.effects if k not in self.compensated and k not in self.abandoned)


@dataclass
class NodeObservation:
    """Everything one pass saw of one node."""

    node: str
    reachable: bool = True
    error: str | None = None
    hint: str | None = None  # what to do about ``error`` (an address that does not resolve, a refused port)
    refused: bool = False  # not reached because it failed verification (a host key that is not the pinned one)
    state: dict[str, Any] | None = None
    exec_status: dict[int, dict[str, Any]] = field(default_factory=dict)
    heartbeat: dict[str, Any] | None = None
    gossip: dict[str, Any] | None = None
    control_errors: list[str] = field(default_factory=list)
    override_nonces: tuple[str, ...] = ()  # nonces of the signed overrides its WAL says were applied
    policy_digest: str | None = None  # the digest of the compiled desired state its policy file holds
    wal_error: dict[str, Any] | None = None
    phases: dict[tuple[int, str], PhaseSummary] = field(default_factory=dict)
    last_lamport: int = 0
    records: int = 0
    bytes_read: int = 0
    io: dict[str, int] | None = None  # the byte counters its WAL adds up to (what its cache says)


def unrecorded_ends(obs: NodeObservation) -> list[PhaseSummary]:
    """The phases the node's WAL ended (COMMIT_PHASE, ABORT_PHASE) after the last end record its
    state.txt knows of, oldest first. state.txt is rewritten after every end record, with that
    record's Lamport index in ``wal_cursor``; an end record past it is one the rewrite missed (a crash
    between the two, or an older state.txt put back). Empty when the cursor does not fit the WAL."""
    if obs.state is None:
        return []  # no state.txt that could be read: nothing to compare with (its own finding says why)
    state = obs.state
    cursor = state.get("wal_cursor")
    known = cursor.get("lamport") if isinstance(cursor, dict) else 0
    if not isinstance(known, int) or isinstance(known, bool) or known > obs.last_lamport:
        return []  # a cursor this WAL does not reach (a repaired tail): nothing to tell by
    ended = [s for s in obs.phases.values() if s.ended and s.end_lamport is not None and s.end_lamport > known]
    return sorted(ended, key=lambda s: s.end_lamport or 0)


def position(o: NodeObservation) -> tuple[int, int]:
    """Where ``state.txt`` says the node stands, as a sortable (g, phase) position."""
    state = o.state or {}
    g = state.get("g")
    ph = state.get("ph")
    return phase_order(g if isinstance(g, int) and not isinstance(g, bool) else 0, ph if isinstance(ph, str) else None)


def forgotten(obs: Mapping[str, NodeObservation]) -> dict[str, list[tuple[int, str]]]:
    """Per reachable node, the transitions its peers committed with it as a participant that lie past
    its own position and that its WAL has no record of — when there is more than one. Such a node
    lost its history (its root was deleted and made again, or re-provisioned): one fact about the
    node, not a partial commit per transition. A single one is a partial commit (a BEGIN_PHASE that
    never reached it)."""
    committed: dict[tuple[int, str], set[str]] = {}
    for o in obs.values():
        for key, s in o.phases.items():
            if s.ended == "COMMIT_PHASE":
                committed.setdefault(key, set()).update(s.participants)
    out: dict[str, list[tuple[int, str]]] = {}
    for name, o in obs.items():
        if not o.reachable:
            continue
        at = position(o)
        lost = sorted(
            (k for k, parts in committed.items() if name in parts and k not in o.phases and phase_order(*k) > at),
            key=lambda k: phase_order(*k),
        )
        if len(lost) > 1:
            out[name] = lost
    return out


def node_behind(obs: Mapping[str, NodeObservation], forgot: Mapping[str, list[tuple[int, str]]]) -> list[Finding]:
    """One finding per node that lost its history (``forgot``: :func:`forgotten` of ``obs``)."""
    findings = []
    for node, lost in forgot.items():
        (g0, p0), (g1, p1) = lost[0], lost[-1]
        state = obs[node].state or {}
        findings.append(
            Finding(
                "node_behind",
                "critical",
                (node,),
                None,
                None,
                f"{node} has no record of {len(lost)} transitions its peers committed with it (g={g0} {p0} to "
                f"g={g1} {p1}): its root was deleted or re-provisioned",
                {"position": f"g={state.get('g', 0)} {state.get('ph') or '-'}", "records": obs[node].records},
                f"haios --repo <repo> node rejoin {node}   # catches it up with its peers",
            )
        )
    return findings


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str  # "critical" | "warning"
    nodes: tuple[str, ...]
    g: int | None
    phase: str | None
    summary: str
    evidence: dict[str, Any]
    fix: str
    first_seen: float = 0.0
    observer_measured: bool = False  # a silence measured by the observer's clock: held back after its own stall

    @property
    def key(self) -> str:
        return f"{self.kind}:{','.join(self.nodes)}:{self.g}:{self.phase}"


@dataclass
class Thresholds:
    """The numbers the detectors need (from policies/thresholds.yaml)."""

    heartbeat_interval: float = 15.0
    unhealthy_after: int = 3
    partition_window: float = 45.0
    sla: Mapping[str, float | None] = field(default_factory=dict)

    @property
    def heartbeat_window(self) -> float:
        return self.heartbeat_interval * self.unhealthy_after


def _fix_for_open(node: str, s: PhaseSummary, others_committed: bool) -> str:
    if s.prepared and others_committed:
        return f"haios --repo <repo> reconcile   # rolls g={s.g} {s.phase} forward on {node}: PREPARE is logged ('haios plan' shows it first)"
    return f"haios --repo <repo> reconcile   # rolls g={s.g} {s.phase} back on {node} ('haios plan' shows it first)"


def _left_out(
    g: int, phase: str, left: list[str], summaries: Mapping[str, PhaseSummary], committed: list[str]
) -> Finding:
    still_open = [p for p in left if summaries[p].ended is None]
    fix = f"haios --repo <repo> node rejoin {' / '.join(left)}   # catches it up with what the others committed"
    if still_open:
        fix = (
            f"haios --repo <repo> reconcile   # rolls its own attempt back on {', '.join(still_open)} alone; then {fix}"
        )
    return Finding(
        "left_out",
        "warning",
        tuple(left),
        g,
        phase,
        f"{', '.join(committed)} committed g={g} {phase} without {', '.join(left)} (left out after "
        f"{'they' if len(left) > 1 else 'it'} failed to prepare)",
        {
            "committed": committed,
            "attempt": {p: "open" if summaries[p].ended is None else "aborted" for p in left},
        },
        fix,
    )


def wal_gap(obs: Mapping[str, NodeObservation], estimators: Estimators, now: float) -> list[Finding]:
    findings = []
    for node, o in obs.items():
        for s in o.phases.values():
            if s.ended is not None:
                continue
            est = estimators[s.phase]
            elapsed = now - s.begin_ts
            if elapsed <= est.timeout():
                continue
            findings.append(
                Finding(
                    "wal_gap",
                    "critical",
                    (node,),
                    s.g,
                    s.phase,
                    f"BEGIN_PHASE without COMMIT/ABORT for {elapsed:.1f} s (timeout {est.timeout():.1f} s)",
                    {
                        "begin_lamport": s.begin_lamport,
                        "trace_id": s.trace_id,
                        "prepared": s.prepared,
                        **est.describe(elapsed),
                    },
                    _fix_for_open(node, s, others_committed=False),
                )
            )
    return findings


def exec_sla(
    obs: Mapping[str, NodeObservation], estimators: Estimators, thresholds: Thresholds, now: float
) -> list[Finding]:
    findings = []
    for node, o in obs.items():
        for g, status in o.exec_status.items():
            if status.get("status") != "IN_PROGRESS":
                continue
            phase = status["phase"]
            sla = thresholds.sla.get(phase) or estimators[phase].timeout()
            started = parse_utc(status["started_at"])
            if now - started <= sla:
                continue
            findings.append(
                Finding(
                    "exec_sla",
                    "warning",
                    (node,),
                    g,
                    phase,
                    f"exec_status_{g}.txt IN_PROGRESS for {now - started:.1f} s, past the SLA of {sla:.1f} s",
                    {
                        "started_at": status["started_at"],
                        "updated_at": status.get("updated_at"),
                        "sla_s": round(sla, 3),
                    },
                    f"haios wal tail <root of {node}> -n 20   # what the executor logged last",
                )
            )
    return findings


def heartbeat_loss(obs: Mapping[str, NodeObservation], thresholds: Thresholds, now: float) -> list[Finding]:
    findings = []
    for node, o in obs.items():
        if not o.reachable:
            continue
        if o.heartbeat is None and o.records == 0:
            findings.append(  # a node that has done nothing yet: what to do next, not a failure
                Finding(
                    "heartbeat_never",
                    "info",
                    (node,),
                    None,
                    None,
                    f"{node} has never sent a heartbeat: start its heartbeat",
                    {},
                    f"haios --repo <repo> node heartbeat {node} --every {thresholds.heartbeat_interval:g}s",
                )
            )
            continue
        if o.heartbeat is None:
            age = None
        else:
            age = now - parse_utc(o.heartbeat["wall_time"])
            if age <= thresholds.heartbeat_window:
                continue
        summary = "no heartbeat has ever been written" if age is None else f"last heartbeat {age:.0f} s ago"
        findings.append(
            Finding(
                "heartbeat_loss",
                "warning",
                (node,),
                None,
                None,
                f"UNHEALTHY: {summary} (limit {thresholds.heartbeat_window:.0f} s)",
                {} if age is None else {"last_heartbeat": (o.heartbeat or {}).get("wall_time"), "age_s": round(age, 1)},
                f"haios --repo <repo> node heartbeat {node} --every {thresholds.heartbeat_interval:g}s   # (re)start the node's heartbeat",
                observer_measured=True,
            )
        )
    return findings


def partial_commit(
    obs: Mapping[str, NodeObservation],
    estimators: Estimators,
    now: float,
    forgot: Mapping[str, list[tuple[int, str]]],
) -> list[Finding]:
    """Once one participant finished (g, phase), every other must finish within the Φ timeout."""
    findings = []
    keys = {k for o in obs.values() for k in o.phases}
    for g, phase in sorted(keys, key=lambda k: (k[0], k[1])):
        summaries = {n: o.phases[(g, phase)] for n, o in obs.items() if (g, phase) in o.phases}
        finished = {n: s for n, s in summaries.items() if s.ended == "COMMIT_PHASE"}
        if not finished:
            continue
        participants = sorted({p for s in summaries.values() for p in s.participants})
        first_end = min(s.end_ts or now for s in finished.values())
        timeout = estimators[phase].timeout()

        # no evidence that one missed the commit: not seen at all (its unreachable finding says so),
        # or a node that lost its whole history (node_behind says so, once)
        unknown = {
            p
            for p in participants
            if p not in summaries and (p not in obs or not obs[p].reachable or (g, phase) in forgot.get(p, ()))
        }
        # a member the coordinator left out: the commit's own attempt did not include it, and its
        # attempt is another one (it failed to prepare): behind, not half done
        included = {p for s in finished.values() for p in s.participants}
        attempts = {s.trace_id for s in finished.values()}
        left = sorted(
            p for p, s in summaries.items() if p not in finished and p not in included and s.trace_id not in attempts
        )
        if left:
            findings.append(_left_out(g, phase, left, summaries, sorted(finished)))
        lagging = [p for p in participants if p not in finished and p not in unknown and p not in left]
        if not lagging or now - first_end <= timeout:
            continue
        missing = {}
        for p in lagging:
            s = summaries.get(p)
            if s is None:
                missing[p] = "no BEGIN_PHASE" if p in obs and obs[p].reachable else "unreachable"
            elif s.ended == "ABORT_PHASE":
                missing[p] = "ABORT_PHASE while others committed"
            else:
                missing[p] = "PREPARE present, no COMMIT_PHASE" if s.prepared else "no PREPARE"
        findings.append(
            Finding(
                "partial_commit",
                "critical",
                tuple(lagging),
                g,
                phase,
                f"committed on {', '.join(sorted(finished))} {now - first_end:.1f} s ago but not on {', '.join(lagging)}",
                {
                    "committed": sorted(finished),
                    "missing": missing,
                    "since_first_commit_s": round(now - first_end, 3),
                    "timeout_s": round(timeout, 3),
                },
                " ; ".join(
                    _fix_for_open(p, summaries[p], True)
                    for p in lagging
                    if p in summaries and summaries[p].ended is None
                )
                or "haios sim check / inspect the nodes: a participant has no record of the phase",
            )
        )
    return findings


def partition(obs: Mapping[str, NodeObservation], thresholds: Thresholds, now: float) -> list[Finding]:
    """A node's partition verdict comes from a gossip file its writer keeps current: a PARTITIONED
    status, or a majority of peers silent for longer than the window as of the file's own time. A
    PARTITIONED file nobody rewrote within the heartbeat window is a ``gossip_stale`` finding instead
    (its writer stopped; the node itself no longer refuses phases by it)."""
    findings = []
    for node, o in obs.items():
        if o.gossip is None:
            continue
        age = gossip_age(o.gossip, now)
        claims = o.gossip.get("partition_status") == "PARTITIONED"
        if age is None or age > thresholds.heartbeat_window:
            if claims:
                since = "at an unknown time" if age is None else f"for {age:.0f} s"
                findings.append(
                    Finding(
                        "gossip_stale",
                        "warning",
                        (node,),
                        None,
                        None,
                        f"gossip not updated {since} (it still says PARTITIONED): is the agent running?",
                        {
                            "updated_at": o.gossip.get("updated_at", o.gossip.get("since")),
                            "age_s": None if age is None else round(age, 1),
                        },
                        f"haios --repo <repo> node heartbeat {node} --every {thresholds.heartbeat_interval:g}s   # rewrites its heartbeat and gossip",
                        observer_measured=True,
                    )
                )
            continue
        written = now - age  # the file's own time, by the node's clock
        peers: dict[str, str | None] = o.gossip.get("peers") or {}
        silent = sorted(
            p for p, heard in peers.items() if heard is None or written - parse_utc(heard) > thresholds.partition_window
        )
        if claims or (peers and 2 * len(silent) > len(peers)):  # a fresh file (a stale one was judged above)
            findings.append(
                Finding(
                    "partition",
                    "critical",
                    (node,),
                    None,
                    None,
                    f"PARTITIONED: {len(silent)} of {len(peers)} peers silent for more than {thresholds.partition_window:.0f} s",
                    {"silent_peers": silent, "gossip": o.gossip},
                    "check the network between the nodes; the node refuses phases until it hears a majority again",
                )
            )
    return findings


@dataclass
class DetectionPass:
    findings: list[Finding]
    convicted: bool
    reason: str = ""


def run_detectors(
    obs: Mapping[str, NodeObservation],
    estimators: Estimators,
    thresholds: Thresholds,
    now: float,
    *,
    last_pass: float | None,
) -> DetectionPass:
    """Every detector over one pass; applies the local-pause rule."""
    forgot = forgotten(obs)  # read by two detectors: worked out once
    partial = partial_commit(obs, estimators, now, forgot)
    covered = {(n, f.g, f.phase) for f in partial for n in f.nodes}
    gaps = [f for f in wal_gap(obs, estimators, now) if (f.nodes[0], f.g, f.phase) not in covered]
    covered |= {(f.nodes[0], f.g, f.phase) for f in gaps}
    slow = [f for f in exec_sla(obs, estimators, thresholds, now) if (f.nodes[0], f.g, f.phase) not in covered]
    silent = heartbeat_loss(obs, thresholds, now)
    dead = {f.nodes[0] for f in silent}  # a node whose agent is silent: its stale gossip says nothing more
    split = [f for f in partition(obs, thresholds, now) if not (f.kind == "gossip_stale" and f.nodes[0] in dead)]
    findings = gaps + slow + silent + partial + split + node_behind(obs, forgot)
    if last_pass is not None and now - last_pass > thresholds.heartbeat_window:
        return DetectionPass(
            findings,
            convicted=False,
            reason=f"the previous pass was {now - last_pass:.0f} s ago (over the {thresholds.heartbeat_window:.0f} s heartbeat window): "
            "silences this observer measured are held back on this pass; what the nodes recorded still counts",
        )
    return DetectionPass(findings, convicted=True)
