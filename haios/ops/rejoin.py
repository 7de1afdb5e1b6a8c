"""``haios node rejoin NODE``: bring an evicted node back into the cluster (SPEC §4.7).

The cluster went on without the node. Before it takes part again:

0. with WAL replication on, a WAL that is lost or corrupt is first rebuilt from the copies its
   replica peers hold (a node that was not evicted is then done: it never stopped taking part);
1. it must be reachable, not PARTITIONED, with a readable WAL (a torn tail is cut on the way);
2. every transition it left half done — or aborted still owing compensation — is rolled back on
   it alone, through the ordinary recovery executor (fenced, checkpointed, compensators under the
   side-effect ledger's rules); a rollback that cannot finish now (a compensator backing off, a
   cost cap) stops the rejoin, and running it again continues where it stopped;
3. it catches up with its peers: every transition the healthy members have all committed since
   the node's own position is committed on the node too, with the intents a peer's WAL holds for
   it — the first healthy peer in name order whose copy verifies (each file's bytes against its
   SHA-256, all of them against the PREPARE digest the peer logged), checked again on the node —
   so that its data/, position, WAL and barrier agree with the cluster's. A transition no peer
   holds a verified copy of stops the catch-up there: the node is not marked caught up, and the
   answer names each transition still missing and why each peer could not serve it (exit 3).
4. ``status/membership.yaml`` forgets the eviction, and one commit records all of it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import audit
from ..clock import wall_clock
from ..config.model import phase_order as order
from ..coord import new_holder
from ..detect.detectors import forgotten
from ..errors import EXIT_BLOCKED, EXIT_PENDING, BlockedError, HaiosError, UsageError, VerificationError
from ..layout import JOURNAL_DIR, MEMBERSHIP_FILE, SEL_DIR, STATUS_FILE, TOMBSTONES_FILE
from ..node.catchup import verify_transition
from ..node.transaction import next_transition
from ..recovery import membership as members
from ..recovery.assess import assess
from ..recovery.clockgc import revive
from ..recovery.machine import State
from ..recovery.model import Context, TraceOutcome, Verdict
from ..recovery.nodeops import NodeOps, committed, node_state, restore_wal
from ..recovery.trace import TraceRunner
from ..vclock import Event, VClock
from ..wal.phases import CATCH_UP_PREFIX
from .archive import check_tombstone
from .context import close_transport
from .finish import write_status
from .plan import build

MAX_CATCH_UP = 50_000  # transitions; beyond that a node is restored, not replayed


@dataclass
class RejoinResult:
    node: str
    trace_id: str
    rolled_back: list[TraceOutcome] = field(default_factory=list)
    caught_up: list[tuple[int, str]] = field(default_factory=list)
    peer_position: tuple[int, str | None] = (0, None)
    rejoined: bool = False
    restored: dict[str, Any] | None = None  # the WAL restore from replicas, when there was one
    missing: list[dict[str, Any]] = field(default_factory=list)  # transitions no peer could serve
    revived: bool = False  # its name's clock tombstone matched its log: its entry is kept again
    commit: str | None = None
    note: str = ""
    code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "haios-rejoin/v1",
            "node": self.node,
            "trace_id": self.trace_id,
            "rolled_back": [o.as_dict() for o in self.rolled_back],
            "caught_up": [{"g": g, "phase": p} for g, p in self.caught_up],
            "peer_position": {"g": self.peer_position[0], "ph": self.peer_position[1]},
            "rejoined": self.rejoined,
            "restored": self.restored,
            "missing": self.missing,
            "revived": self.revived,
            "commit": self.commit,
            "note": self.note,
            "exit_code": self.code,
        }


def _position(state: dict[str, Any] | None) -> tuple[int, str | None]:
    state = state or {}
    return int(state.get("g") or 0), state.get("ph")


def _missed(start: tuple[int, str | None], end: tuple[int, str | None]) -> list[tuple[int, str]]:
    """The transitions after ``start`` up to and including ``end``, in order."""
    out: list[tuple[int, str]] = []
    position = start
    while order(*position) < order(*end):
        position = next_transition(*position)
        out.append(position)
        if len(out) > MAX_CATCH_UP:
            raise HaiosError(
                f"{start} -> {end}: more than {MAX_CATCH_UP} transitions behind",
                hint="restore the node from a peer's data instead of catching up transition by transition",
            )
    return out


def _state(ctx: Context, node: str) -> tuple[int, str | None]:
    """The node's position as its state.txt says now (after the rollbacks above)."""
    state = node_state(ctx.transport, node)
    if state is None:
        raise HaiosError(f"{node}: state.txt is missing", hint="run 'haios doctor' to see what the node root lacks")
    return _position(state)


def _open_transitions(ctx: Context, node: str) -> list[tuple[int, str]]:
    obs = ctx.observations[node]
    found = {key for key, s in obs.phases.items() if s.ended is None}
    found |= {(int(e["g"]), str(e["phase"])) for e in (obs.state or {}).get("uncompensated") or []}
    return sorted(found, key=lambda k: order(*k))


def rejoin(repo: Path | str, node: str, *, now: float | None = None, holder: str | None = None) -> RejoinResult:
    path = Path(repo)
    clock = wall_clock(now)
    contexts: list[Context] = []  # each opened a transport for this call: closed with it
    try:
        plan, ctx = build(path, now=clock())
        contexts.append(ctx)
        result = RejoinResult(node, f"{CATCH_UP_PREFIX}{node}-{uuid.uuid4().hex[:12]}")
        if node not in {n.name for n in ctx.config.cluster.nodes}:
            raise UsageError(f"{node}: not a node of haios.yaml")
        # a name whose clock entry was pruned comes back only with the log its tombstone recorded
        tombstone = check_tombstone(
            path, node, lambda: _last_event(ctx, node), f"{node} rejoining under a decommissioned name", clock()
        )
        result.revived = tombstone == "matches"  # recorded with the rejoin's commit
        if ctx.config.cluster.replication.mode != "off":
            # a node whose WAL is lost or corrupt gets it back from its replica peers first
            answer = restore_wal(ctx.transport, node)
            if answer.get("restored"):
                result.restored = answer
                plan, ctx = build(path, now=clock())
                contexts.append(ctx)
                if node not in ctx.membership.evicted:
                    result.note = (
                        f"WAL restored from {answer['source']}'s replica ({answer['reason']}): "
                        f"{answer['segments']} segment{'s' if answer['segments'] != 1 else ''} up to lamport "
                        f"{answer['last_lamport']}"
                    )
                    return _finish(path, ctx, result, plan.observed_hash)
        evicted = node in ctx.membership.evicted
        lost = node in forgotten(ctx.observations)
        if not evicted and not lost and not _left_behind(ctx, plan.active, node):
            if result.revived:
                result.note = f"its log matches its clock tombstone; {node} already takes part"
                return _finish(path, ctx, result, plan.observed_hash)
            raise UsageError(f"{node} is not evicted (status/membership.yaml) and not behind: it already takes part")
        # not evicted but without the history its peers committed with it (a root deleted and made
        # again, or re-provisioned), or left out of transitions while it was cut off (a 'haios run'
        # went on with the majority): it catches up the same way
        if plan.minority:
            raise BlockedError(
                f"minority view: {len(plan.reachable)} of {len(plan.active)} active members reachable; nothing changes",
                hint="rejoin once a majority of the cluster is reachable",
            )
        _ready(ctx, node)
        runner = TraceRunner(ctx, holder or new_holder(), clock)
        if not _rolled_back(ctx, runner, node, result):
            return _finish(path, ctx, result, plan.observed_hash)
        peers = [
            n
            for n in plan.active
            if n != node
            and ctx.observations[n].reachable
            and members.isolation(ctx.observations[n], ctx.now, ctx.config.thresholds.heartbeat_window) is None
        ]
        if not evicted and not lost:  # left behind: it catches up with those that went on without it
            mine = order(*_state(ctx, node))
            peers = [n for n in peers if order(*_position(ctx.observations[n].state)) > mine]
        if not peers:
            raise BlockedError(f"{node}: no healthy peer to catch up from")
        # every transition up to the least advanced healthy peer is committed cluster-wide
        result.peer_position = min((_position(ctx.observations[n].state) for n in peers), key=lambda p: order(*p))
        start = _state(ctx, node)
        missed = _missed(start, result.peer_position)
        sources, unserved = _sources(ctx, peers, start, result.peer_position, missed)
        for g, phase in missed:
            source = sources.get((g, phase))
            if source is None:
                result.missing = [{"g": k[0], "phase": k[1], "peers": unserved[k]} for k in missed if k in unserved]
                why = "; ".join(f"{peer}: {reason}" for peer, reason in unserved[(g, phase)].items())
                result.code = EXIT_BLOCKED
                result.note = (
                    f"caught up {len(result.caught_up)} transitions, then stopped: no healthy peer holds a verified "
                    f"copy of what g={g} {phase} wrote ({why}); {len(result.missing)} "
                    f"transition{'s' if len(result.missing) != 1 else ''} still missing, so {node} is not caught up"
                )
                return _finish(path, ctx, result, plan.observed_hash)
            lease = ctx.backend.acquire(phase, runner.holder, result.trace_id, ctx.config.thresholds.lease_ttl, clock())
            try:
                if evicted:
                    note = f"caught up after eviction: committed by {', '.join(peers)} while {node} was evicted"
                elif lost:
                    note = f"caught up: committed by {', '.join(peers)}; {node}'s root had lost its record of it"
                else:
                    note = f"caught up: committed by {', '.join(peers)} while {node} was cut off from them"
                NodeOps(ctx.transport, result.trace_id, g, phase, lease.token).catchup(node, note=note, source=source)
            finally:
                ctx.backend.release(lease, clock())
            result.caught_up.append((g, phase))
        how = f"caught up {len(result.caught_up)} transitions to g={result.peer_position[0]} {result.peer_position[1]}"
        if evicted:
            members.rejoined(path, node, clock(), how)
        result.rejoined = True
        result.note = how
        return _finish(path, ctx, result, plan.observed_hash)
    finally:
        for opened in contexts:
            close_transport(opened.transport)


def _sources(
    ctx: Context,
    peers: list[str],
    start: tuple[int, str | None],
    end: tuple[int, str | None],
    missed: list[tuple[int, str]],
) -> tuple[dict[tuple[int, str], dict[str, Any]], dict[tuple[int, str], dict[str, str]]]:
    """For each missed transition, the committed copy of the first peer (in name order) whose copy
    verifies; and for those none can serve, why each peer could not."""
    found: dict[tuple[int, str], dict[str, Any]] = {}
    why: dict[tuple[int, str], dict[str, str]] = {key: {} for key in missed}
    for peer in sorted(peers):
        wanted = [key for key in missed if key not in found]
        if not wanted:
            break
        try:
            answer = committed(ctx.transport, peer, start, end)
        except HaiosError as exc:
            for key in wanted:
                why[key][peer] = f"its WAL could not be read ({exc.one_line()})"
            continue
        held = {(t.get("g"), t.get("phase")): t for t in answer if isinstance(t.get("g"), int)}
        for key in wanted:
            transition = held.get(key)
            problem = "its WAL does not hold the commit" if transition is None else verify_transition(transition, *key)
            if problem is not None:
                why[key][peer] = problem
            elif transition is not None:
                found[key] = {**transition, "node": peer}
    return found, {key: reasons for key, reasons in why.items() if key not in found}


def _last_event(ctx: Context, node: str) -> Event | None:
    """The node's last WAL record as an event of the total order (None: its WAL is empty)."""
    answer = ctx.transport.call(node, {"op": "clock"})
    vc, lamport = answer.get("vc"), answer.get("lamport")
    if not isinstance(vc, dict) or not isinstance(lamport, int):
        return None
    return Event(node, lamport, VClock.from_json(vc))


def _left_behind(ctx: Context, active: list[str], node: str) -> bool:
    """Whether ``node``, with nothing open on it, is behind other reachable active members: they went
    on without it (it was cut off, and left out of those transitions)."""
    obs = ctx.observations.get(node)
    if obs is None or not obs.reachable or obs.state is None or obs.state.get("status") != "READY":
        return False
    others = [
        _position(o.state)
        for n in active
        if n != node and (o := ctx.observations.get(n)) is not None and o.reachable and o.state is not None
    ]
    return any(order(*_position(obs.state)) < order(*p) for p in others)


def _ready(ctx: Context, node: str) -> None:
    """A node rejoins only when it is reachable, not isolated, and its WAL is readable."""
    why = members.isolation(ctx.observations.get(node), ctx.now, ctx.config.thresholds.heartbeat_window)
    if why is not None:
        raise BlockedError(f"{node} is still isolated ({why[0]})", hint="rejoin it once it is reachable and healthy")
    wal_error = ctx.observations[node].wal_error
    if wal_error is not None and not wal_error.get("torn_tail"):
        raise VerificationError(
            f"{node}: the WAL is corrupt mid-log ({wal_error.get('reason', 'corrupt')})",
            hint="repair or restore it first ('haios wal verify' shows where)",
        )


def _rolled_back(ctx: Context, runner: TraceRunner, node: str, result: RejoinResult) -> bool:
    """Roll back, on the node alone, every transition it left half done; False (the result says why)
    when one cannot be rolled back now."""
    for g, phase in _open_transitions(ctx, node):
        trace = assess(ctx, g, phase, [node], force_rollback=f"{node} rejoins; the cluster went on without it")
        if trace.verdict is Verdict.NOTHING:
            continue
        if trace.verdict is not Verdict.ROLLBACK:
            result.code, result.note = EXIT_BLOCKED, f"g={g} {phase} on {node}: {trace.reason}"
            return False
        outcome = runner.run(trace)
        result.rolled_back.append(outcome)
        if outcome.after != State.CLEAN_EXIT.value:
            result.code = outcome.code or EXIT_PENDING
            result.note = f"g={g} {phase} on {node} is not rolled back yet: {outcome.note}; run rejoin again later"
            return False
    return True


def _finish(path: Path, ctx: Context, result: RejoinResult, observed: str) -> RejoinResult:
    outcome = "rejoined" if result.rejoined else ("WAL restored" if result.restored else "not rejoined yet")
    subject = f"haios node rejoin {result.node}: {outcome}"
    body = [result.note]
    for o in result.rolled_back:
        body.append(f"g={o.g} {o.phase} (trace {o.trace_id}): {o.before} -> {o.after}")
        body += [f"  - {line}" for line in o.done]
    body += [f"caught up g={g} {p}" for g, p in result.caught_up]
    body += [f"missing g={m['g']} {m['phase']}: no peer holds a verified copy" for m in result.missing]
    traces = [{"trace_id": o.trace_id, "result": o.after, "fencing_token": o.token or "-"} for o in result.rolled_back]
    traces.append(
        {
            "trace_id": result.trace_id,
            "result": "REJOINED" if result.rejoined else ("RESTORED" if result.restored else "PENDING"),
            "fencing_token": "-",
        }
    )
    if result.restored:
        r = result.restored
        body.append(f"WAL restored from {r['source']} ({r['reason']}); the old one kept as {r['kept'] or '-'}")
    if result.revived:
        revive(path, result.node, ctx.now)
        body.append(
            f"its clock tombstone matched its log: {result.node}'s entry is kept again from the next policy push"
        )
    if (
        result.rejoined
        or result.restored
        or result.caught_up
        or result.revived
        or any(o.recorded for o in result.rolled_back)
    ):
        write_status(ctx)
        paths = [JOURNAL_DIR, STATUS_FILE, SEL_DIR, MEMBERSHIP_FILE, TOMBSTONES_FILE]
        result.commit = audit.commit_run(path, paths, subject, body, traces, observed)
    return result
