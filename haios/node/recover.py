"""Recovery on the participant side: what a reconciler does to one node (SPEC §4.1–§4.3).

Every operation that writes first checks the node's fence for the shard (a stale fencing token raises
FencedError before anything changes), is idempotent (running it again after a crash finds its own
work done and skips it), and leaves a RECOVERY record — trace, token, shard, step, outcome — in the
node's WAL before it returns, so the next reconciler knows which steps of the trace are finished.

The operations are plain functions of a node root; :func:`dispatch` runs one from a JSON request,
which is how a transport carries them to a remote node (``haios node recover ROOT``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import asdict
from inspect import signature
from pathlib import Path
from typing import Any

from .. import controlfile
from ..config.model import PHASES, phase_order, policy_digest
from ..errors import (
    BarrierError,
    ControlFileError,
    ReplayConflict,
    UsageError,
    VerificationError,
    VersionConflict,
    WalCorruptError,
)
from ..resources import schema
from ..wal import Record, RecordType, read_records
from ..wal.phases import ABANDON_STEP, PhaseLog
from . import clocks, manifest, replicas
from .catchup import CATCH_UP_STEP, committed_transitions, decoded, source_step, verify_transition
from .fence import POLICY_SHARD, check_fence
from .root import CONTROL_FILES
from .runner import command_running, resume_phase
from .timing import STEPS, collecting
from .transaction import Node, crash_window, scan_phases

OPS = (
    "inspect",
    "forward",
    "settle",
    "compensated",
    "rollback",
    "repair",
    "checkpoint",
    "catchup",
    "committed",
    "resume",
    "clock",
    "see",
    "policy",
    "restore_wal",
    "replication",
)


def _tail_logs(
    node: Node, from_lamport: int | None = None
) -> tuple[dict[tuple[int, str], PhaseLog], dict[str, Any] | None]:
    """The phases in the WAL's tail (or from ``from_lamport``, where a phase that already ended
    began); a torn tail ends the read (and is reported), other damage raises."""
    records: list[Record] = []
    torn = None
    source = read_records(node.root / "wal", from_lamport=from_lamport) if from_lamport else node._tail()
    try:
        for record in source:
            records.append(record)
    except WalCorruptError as exc:
        if not exc.corruption.torn_tail:
            raise
        torn = exc.corruption.as_dict()
    return scan_phases(node.root, records=records, begun_at=from_lamport), torn


def _status(node: Node, log: PhaseLog | None, g: int, phase: str) -> str:
    if log is not None:
        if log.ended == "COMMIT_PHASE":
            return "committed"
        if log.ended == "ABORT_PHASE":
            return "aborted"
        return "prepared" if log.prepared else "begun"
    state, _ = node.state()
    # state.txt holds the last committed transition; anything at or before it was committed
    return "committed" if phase_order(state["g"], state["ph"]) >= phase_order(g, phase) else "absent"


def inspect(root: Path, g: int, phase: str, from_lamport: int | None = None) -> dict[str, Any]:
    """What the node holds of (g, phase): its status, side effects (with outcome and compensation) and
    the recovery checkpoints already written. ``from_lamport`` (where its BEGIN_PHASE is) finds a
    phase that ended before the last one the node committed."""
    if phase not in PHASES:
        raise UsageError(f"unknown phase {phase!r}")
    node = Node(root)
    logs, torn = _tail_logs(node, from_lamport)
    log = logs.get((g, phase))
    state, _ = node.state()
    effects = []
    if log is not None:
        for key, effect in log.side_effects.items():
            effects.append(
                {
                    "key": key,
                    "kind": effect["kind"],
                    "params": effect["params"],
                    "compensator": effect["compensator"],
                    "cost": effect.get("cost"),
                    "vc": effect.get("vc") or {},
                    "done": log.done.get(key),
                    "returned": key in log.done,
                    "compensated": key in log.compensated,
                    "abandoned": key in log.abandoned,
                }
            )
    return {
        "node": node.name,
        "g": g,
        "phase": phase,
        "status": _status(node, log, g, phase),
        "state": {"g": state["g"], "ph": state["ph"]},
        "participants": list(log.participants) if log else [],
        "begin_trace": log.trace_id if log else None,
        "steps": dict(log.steps) if log else {},
        "side_effects": effects,
        "recovery": list(log.recovery) if log else [],
        "partitioned": node.partitioned(),
        "torn_tail": torn,
    }


def _guard(root: Path, phase: str, token: int) -> Node:
    if phase not in PHASES:
        raise UsageError(f"unknown phase {phase!r}")
    check_fence(root, phase, token)  # SPEC §2.5: a stale reconciler never writes
    return Node(root)


def checkpoint(root: Path, *, trace_id: str, token: int, g: int, phase: str, step: str, outcome: Any) -> dict[str, Any]:
    """Write one RECOVERY record (a step of the trace that is finished on this node)."""
    node = _guard(root, phase, token)
    fields = {"token": token, "shard": phase, "step": step, "outcome": outcome}
    lamport = node.append(g, phase, trace_id, RecordType.RECOVERY, fields)
    return {"node": node.name, "step": step, "outcome": outcome, "lamport": lamport}


def forward(root: Path, *, trace_id: str, token: int, g: int, phase: str) -> dict[str, Any]:
    """Roll (g, phase) forward: replay its intents idempotently, validate, COMMIT_PHASE (SPEC §4.2)."""
    node = _guard(root, phase, token)
    logs, _ = _tail_logs(node)
    status = _status(node, logs.get((g, phase)), g, phase)
    if status == "committed":
        return {"node": node.name, "outcome": "already committed"}
    if status != "prepared":
        raise BarrierError(f"{root}: (g={g}, {phase}) is {status} on {node.name}; only a PREPAREd phase rolls forward")
    redone: list[str] = []
    before, vc = 0, {}
    for attempt in range(1, REDO_ATTEMPTS + 1):
        if attempt > 1 and _status(node, _tail_logs(node)[0].get((g, phase)), g, phase) == "committed":
            break  # COMMIT_PHASE made it, the state.txt write after it did not: settled below
        tx = node.resume(g, phase)
        try:
            before = len(tx.intents)
            tx.prepare()  # idempotent: applies only the intents not yet in effect, validating each file
            tx.event("phase_transition.finished", outcome="committed", recovery=trace_id)
            tx.commit()
            vc = tx.vc.to_json()
            break
        except VersionConflict as exc:
            # ABORT + REDO (SPEC §2.2): the partial write is dropped and the replay done again from the WAL
            why = _redo(node, exc, tx.intents)
            redone.append(why)
            if attempt == REDO_ATTEMPTS:
                raise ReplayConflict(
                    f"{exc.message}, still after {REDO_ATTEMPTS} attempts to redo the roll-forward from the WAL ({why})"
                ) from None
        finally:
            tx.close()
    settle(root, trace_id=trace_id, token=token, g=g, phase=phase)  # a commit whose state.txt write conflicted
    vc = vc or dict(node.state()[0].get("vc") or {})
    checkpoint(root, trace_id=trace_id, token=token, g=g, phase=phase, step="commit", outcome="committed")
    answer: dict[str, Any] = {"node": node.name, "outcome": "committed", "intents": before, "vc": vc}
    return {**answer, "redone": redone} if redone else answer


REDO_ATTEMPTS = 3


def _committed_version(node: Node, relpath: str) -> tuple[int, str, int] | None:
    """(version, sha256, size) the WAL's committed phases leave ``data/<relpath>`` at (None: absent)."""
    found: tuple[int, str, int] | None = None
    logs = scan_phases(node.root)
    for log in sorted(logs.values(), key=lambda entry: phase_order(entry.g, entry.phase)):
        if log.ended != "COMMIT_PHASE":
            continue
        for intent in log.intents:
            if intent.get("path") != relpath:
                continue
            if intent.get("op") == "delete":
                found = None
            else:
                expected = intent.get("expected_version")
                size = len(base64.b64decode(intent.get("content_b64") or ""))
                found = (1 if expected is None else int(expected) + 1, str(intent["sha256"]), size)
    return found


def _redo(node: Node, exc: VersionConflict, intents: list[dict[str, Any]]) -> str:
    """Undo what makes ``exc`` before the replay is tried again; returns what was done, in words.

    A conflict on a data/ file is the manifest disagreeing with the WAL (a manifest write lost or put
    back): its entry is rebuilt from the committed INTENTs, when the file's bytes are the committed
    ones or those of the replay itself. A control file's conflict (another writer first) needs only
    the fresh read the next attempt makes."""
    try:
        relpath = Path(exc.path).relative_to(node.data).as_posix()
    except ValueError:
        return f"{Path(exc.path).name} read again"
    committed = _committed_version(node, relpath)
    held = manifest.load(node.root).files.get(relpath)
    now = manifest.file_sha256(node.data / relpath)
    ours = {i["sha256"] for i in intents if i.get("path") == relpath and i.get("op") == "write"}
    if committed is None:
        if held is not None and (now is None or now in ours):
            manifest.set_entry(node.root, relpath, None)
            return f"data/{relpath}: absent by the WAL; its manifest entry v{held.version} dropped"
        return f"data/{relpath}: absent by the WAL, but its bytes are neither absent nor the replay's"
    version, sha, size = committed
    if now in (sha, *ours) and (held is None or (held.version, held.sha256) != (version, sha)):
        manifest.set_entry(node.root, relpath, manifest.Entry(version, sha, size))
        return f"data/{relpath}: manifest entry set to v{version} from the WAL"
    return f"data/{relpath}: the WAL's last committed version is v{version}, its bytes are not"


def settle(root: Path, *, trace_id: str, token: int, g: int, phase: str, force: bool = False) -> dict[str, Any]:
    """Bring state.txt up to the WAL: apply what the rewrite after each end record it missed would
    have written — (g, ph) of a COMMIT_PHASE, the side effects an ABORT_PHASE still owes, where the
    WAL goes on — as the crash between the record and the rewrite kept it from doing.

    Only one missed end record, of the phase state.txt says is in progress, is such a crash; more
    (an older state.txt put back, or an edited one) is refused unless ``force`` — a human who checked
    data/ against the WAL, by a signed resume override."""
    node = _guard(root, phase, token)
    missed, tail = node.unrecorded_ends()
    if not missed:
        return {"node": node.name, "outcome": "state.txt knows every end record"}
    for _ in range(20):
        state, version = node.state()
        if not crash_window(state, len(missed)) and not force:
            raise BarrierError(
                f"{root}: state.txt of {node.name} says (g={state.get('g')}, {state.get('ph')}) but its WAL ended "
                f"{len(missed)} phase(s) after it, up to (g={missed[-1].g}, {missed[-1].phase}): an older or edited "
                "state.txt, not a crash",
                hint="check data/ against the WAL ('haios wal inspect'), then sign a resume override for the trace",
            )
        body = dict(state)
        for end in missed:
            body["status"] = "READY"
            if end.ended == "COMMIT_PHASE":
                body.update(g=end.g, ph=end.phase)
                continue
            # the attempt this record ended, as it stood then (what abort() would have written)
            log = scan_phases(root, records=[r for r in tail if r.lamport <= end.cursor.lamport]).get(
                (end.g, end.phase)
            )
            if log is None:
                continue  # its BEGIN lies before the tail: nothing known to owe
            owed = [k for k in log.side_effects if k not in log.compensated and k not in log.abandoned]
            known = {(e["g"], e["phase"], e.get("begin_lamport")) for e in body.get("uncompensated") or []}
            if owed and (end.g, end.phase, log.begin_lamport) not in known:
                entry = {"g": end.g, "phase": end.phase, "begin_lamport": log.begin_lamport, "keys": owed}
                body["uncompensated"] = [*(body.get("uncompensated") or []), entry]
        last = missed[-1]
        body.update(wal_cursor=asdict(last.cursor), wal_record_start=last.start, vc=last.vc)
        if node.open_phase(tail) is not None:
            body["status"] = "IN_PHASE"  # a phase began after the last end record and is still open
        try:
            controlfile.write_mapping(node.root / "state.txt", body, expected_version=version)
            break
        except VersionConflict:
            continue  # the node wrote state.txt meanwhile: read again
    else:
        raise ControlFileError(node.root / "state.txt", "too many concurrent writers; run the step again")
    what = f"state.txt brought up to (g={body['g']}, {body['ph']}) from {len(missed)} end record(s) it missed"
    checkpoint(root, trace_id=trace_id, token=token, g=g, phase=phase, step="settle", outcome=what)
    return {"node": node.name, "outcome": what}


def compensated(
    root: Path,
    *,
    trace_id: str,
    token: int,
    g: int,
    phase: str,
    key: str,
    result: Any,
    from_lamport: int | None = None,
) -> dict[str, Any]:
    """Record that side effect ``key`` of (g, phase) was undone (a COMPENSATED record, durable)."""
    node = _guard(root, phase, token)
    logs, _ = _tail_logs(node, from_lamport)
    log = logs.get((g, phase))
    if log is None or key not in log.side_effects:
        raise UsageError(f"{root}: (g={g}, {phase}) on {node.name} has no side effect {key!r}")
    if key in log.compensated:
        _settle(node, g, phase, key)  # a crash may have come between the record and state.txt
        return {"node": node.name, "key": key, "outcome": "already compensated"}
    node.append(g, phase, log.trace_id, RecordType.COMPENSATED, {"key": key, "result": result})
    _settle(node, g, phase, key)
    checkpoint(root, trace_id=trace_id, token=token, g=g, phase=phase, step=f"compensate:{key}", outcome="ok")
    return {"node": node.name, "key": key, "outcome": "compensated"}


def _settle(node: Node, g: int, phase: str, key: str, attempts: int = 20) -> None:
    """Drop ``key`` from state.txt's list of side effects an aborted phase still owes."""
    for _ in range(attempts):
        state, version = node.state()
        owed = state.get("uncompensated") or []
        kept = []
        for entry in owed:
            if (entry["g"], entry["phase"]) == (g, phase):
                entry = {**entry, "keys": [k for k in entry["keys"] if k != key]}
            if entry["keys"]:
                kept.append(entry)
        if kept == owed:
            return
        body = {k: v for k, v in state.items() if k != "uncompensated"}
        if kept:
            body["uncompensated"] = kept
        try:
            controlfile.write_mapping(node.root / "state.txt", body, expected_version=version)
            return
        except VersionConflict:
            continue  # the executor wrote state.txt meanwhile: read again
    raise ControlFileError(node.root / "state.txt", "too many concurrent writers; run the step again")


def rollback(
    root: Path, *, trace_id: str, token: int, g: int, phase: str, reason: str, abandon: list[str] | None = None
) -> dict[str, Any]:
    """Roll (g, phase) back: restore data/ from the BEGIN snapshot, ABORT_PHASE (SPEC §4.3).

    Compensation comes first: this refuses while a side effect has no COMPENSATED record, unless its
    key is in ``abandon`` (a HARD_FAILED trace gives up on it, with an alert).
    """
    node = _guard(root, phase, token)
    logs, _ = _tail_logs(node)
    log = logs.get((g, phase))
    owing = [e for e in node.state()[0].get("uncompensated") or [] if (e["g"], e["phase"]) == (g, phase)]
    if log is None and owing:
        # aborted long ago, with side effects still owed: its records lie before the WAL's tail
        log = _tail_logs(node, owing[-1]["begin_lamport"])[0].get((g, phase))
    status = _status(node, log, g, phase)
    if status == "aborted" and log is not None and abandon:
        # aborted before (by its executor): what it still owes and the trace gives up on is recorded
        owed = [k for k in log.side_effects if k in abandon and k not in log.compensated and k not in log.abandoned]
        if owed:
            checkpoint(
                root, trace_id=trace_id, token=token, g=g, phase=phase, step=ABANDON_STEP, outcome={"abandoned": owed}
            )
        for key in abandon:  # also after a crash between the record and state.txt
            if key in log.side_effects and key not in log.compensated:
                _settle(node, g, phase, key)
        if owed:
            return {"node": node.name, "outcome": "abandoned", "abandoned": owed}
    if status in ("aborted", "absent"):
        return {"node": node.name, "outcome": f"already {'aborted' if status == 'aborted' else 'clean'}"}
    if status == "committed":
        raise BarrierError(
            f"{root}: (g={g}, {phase}) is committed on {node.name}; its snapshot is gone, it cannot be rolled back"
        )
    assert log is not None
    if command_running(node.root, g, phase):
        raise BarrierError(
            f"{root}: the command of (g={g}, {phase}) is still running on {node.name}; it is rolled back once it ends",
            hint="run 'haios reconcile' again later",
        )
    missing = [k for k in log.side_effects if k not in log.compensated and k not in (abandon or [])]
    if missing:
        raise BarrierError(
            f"{root}: (g={g}, {phase}) on {node.name} has side effects not yet compensated: {', '.join(missing)}",
            hint="compensation runs before the state is rewound (docs/recovery.md)",
        )
    tx = node.resume(g, phase)
    tx.event("phase_transition.finished", outcome="aborted", recovery=trace_id)
    tx.abort(reason, abandoned=[k for k in (abandon or []) if k in log.side_effects and k not in log.compensated])
    checkpoint(root, trace_id=trace_id, token=token, g=g, phase=phase, step="abort", outcome="aborted")
    return {"node": node.name, "outcome": "aborted", "abandoned": list(abandon or []), "vc": tx.vc.to_json()}


def repair(root: Path, *, trace_id: str, token: int, g: int, phase: str) -> dict[str, Any]:
    """Cut a torn WAL tail (the cut bytes are kept in ``.broken``), or with replication restore the
    records it lost from a replica that holds them; mid-log damage is refused."""
    node = _guard(root, phase, token)
    node.open_wal().close()  # opening for writing repairs a torn tail (from a replica if one holds it), under the lock
    outcome = f"torn tail restored from {node.healed['source']}'s replica" if node.healed else "torn tail cut"
    checkpoint(root, trace_id=trace_id, token=token, g=g, phase=phase, step="repair", outcome=outcome)
    return {"node": node.name, "outcome": "repaired"}


def catchup(
    root: Path, *, trace_id: str, token: int, g: int, phase: str, note: str, source: dict[str, Any]
) -> dict[str, Any]:
    """Commit (g, phase) on a rejoining node that missed it: a transition of its own whose intents
    are those ``source`` — a peer's committed transition (:func:`.catchup.committed_transitions`) —
    logged, verified here against their hashes and the peer's PREPARE digest, then logged, applied to
    data/ and committed like any phase, with a STEP naming the peer. Idempotent: a transition it
    already has is left alone."""
    node = _guard(root, phase, token)
    state, _ = node.state()
    if phase_order(int(state.get("g") or 0), state.get("ph")) >= phase_order(g, phase):
        return {"node": node.name, "outcome": "already committed"}
    problem = verify_transition(source, g, phase)
    if problem is not None:
        peer = str(source.get("node") if isinstance(source, dict) else "?")[:64]
        raise VerificationError(
            f"{root}: the catch-up source of g={g} {phase} from {peer} fails its check: {problem}",
            hint="run 'haios node rejoin' again: it takes the transition from a peer whose copy verifies",
        )
    if node.open_phase() is not None:
        raise BarrierError(
            f"{root}: {node.name} has a transition open; it must be rolled back before catching up",
            hint="run 'haios node rejoin' again: it rolls the open transition back first",
        )
    with node.begin(g, phase, participants=[node.name], trace_id=trace_id) as tx:
        tx.step(CATCH_UP_STEP, source_step(source, note))
        for intent in source["intents"]:
            tx.intent(str(intent["path"]), decoded(intent))  # against this node's own versions
        tx.prepare()
        tx.commit()
    checkpoint(root, trace_id=trace_id, token=token, g=g, phase=phase, step="catchup", outcome="committed")
    return {"node": node.name, "outcome": "committed", "files": len(source["intents"])}


def resume(root: Path, *, trace_id: str, token: int, g: int, phase: str) -> dict[str, Any]:
    """Run the open (g, phase)'s resumable command again after its last STEP (:func:`.runner.resume_phase`)."""
    _guard(root, phase, token)
    done = resume_phase(root, g, phase)
    checkpoint(root, trace_id=trace_id, token=token, g=g, phase=phase, step="resume", outcome=done.outcome)
    return done.to_json()


def committed(root: Path, *, after: list[Any], until: list[Any]) -> dict[str, Any]:
    """The transitions this node committed after position ``after`` up to ``until`` ([g, phase]),
    with their intents: what a rejoining peer catches up from (read only)."""
    try:
        low = (int(after[0]), None if after[1] is None else str(after[1]))
        high = (int(until[0]), str(until[1]))
    except (TypeError, ValueError, IndexError):
        raise UsageError("'committed' takes after and until as [g, phase]") from None
    if high[1] not in PHASES or low[1] not in (None, *PHASES):
        raise UsageError(f"unknown phase in {after!r} .. {until!r}")
    return {"node": Node(root).name, "transitions": committed_transitions(root, low, high)}


def policy(root: Path, *, token: int, policy: dict[str, Any]) -> dict[str, Any]:
    """Make ``policy`` (the compiled desired state, :meth:`RepoConfig.compile_policy`) the node's
    ``policy`` control file: fenced on the policy shard (a stale reconciler's push is refused), and
    only when its digest differs from the one the node holds. A policy that does not follow its
    schema, whose digest is not that of its content, or that is another cluster's is refused."""
    from jsonschema import Draft202012Validator  # only a push needs it: every other request starts faster

    if not isinstance(policy, dict):
        raise UsageError(f"{root}: a pushed policy must be a mapping")
    error = next(iter(Draft202012Validator(schema(CONTROL_FILES["policy"])).iter_errors(policy)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise UsageError(f"{root}: the pushed policy is not one haios compiles ({where}: {error.message[:200]})")
    if policy.get("digest") != policy_digest(policy):
        raise UsageError(f"{root}: the pushed policy's digest is not that of its content (damaged on the way?)")
    path = root / "policy"
    for _ in range(20):
        current, version = controlfile.read_mapping(path) if path.exists() else ({}, None)
        if current.get("cluster") not in (None, policy["cluster"]):
            raise UsageError(
                f"{root}: this node belongs to cluster {str(current['cluster'])[:64]!r}, not {policy['cluster']!r}",
                hint="check the node's address and root in haios.yaml",
            )
        check_fence(root, POLICY_SHARD, token)  # SPEC §2.5: a stale reconciler never writes
        name = Node(root).name
        if current.get("digest") == policy["digest"]:
            return {"node": name, "outcome": "already current", "digest": policy["digest"]}
        try:
            written = controlfile.write_mapping(path, policy, expected_version=version)
        except VersionConflict:
            continue  # pushed meanwhile by another reconciler: read again and decide again
        return {"node": name, "outcome": "pushed", "digest": policy["digest"], "version": written}
    raise ControlFileError(path, "too many concurrent writers; run reconcile again")


def dispatch(root: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Run one operation from a JSON request ``{"op": ..., ...}`` (the remote form of the functions above)."""
    op = request.get("op")
    args = {k: v for k, v in request.items() if k != "op"}
    if op == "inspect":
        args = {k: args[k] for k in ("g", "phase", "from_lamport") if k in args}  # it takes no token
    elif op == "committed":
        args = {k: args[k] for k in ("after", "until") if k in args}
    elif op == "clock":
        args = {k: args[k] for k in ("origin",) if k in args}
    operations: dict[str, Callable[..., dict[str, Any]]] = {
        "inspect": inspect,
        "forward": forward,
        "settle": settle,
        "compensated": compensated,
        "rollback": rollback,
        "repair": repair,
        "checkpoint": checkpoint,
        "catchup": catchup,
        "committed": committed,
        "resume": resume,
        "clock": clocks.clock,
        "see": clocks.see,
        "policy": policy,
        **replicas.operations(),
    }
    func = operations.get(str(op))
    if func is None:
        raise UsageError(f"unknown recovery operation {op!r} (known: {', '.join(OPS)})")
    try:
        signature(func).bind(root, **args)
    except TypeError as exc:
        raise UsageError(f"recovery request {op!r}: bad arguments ({exc})") from exc
    with collecting() as timings:
        result: dict[str, Any] = func(root, **args)
    if op not in (
        "inspect",
        "committed",
        "clock",
        "see",
        "policy",
        "replication",
        "restore_wal",
    ):  # where the time went (SPEC §9's recovery steps), for the metrics
        result["timings"] = {k: round(v, 6) for k, v in sorted(timings.items()) if k in STEPS}
    return result


__all__ = [
    "OPS",
    "catchup",
    "checkpoint",
    "committed",
    "compensated",
    "dispatch",
    "policy",
    "forward",
    "inspect",
    "repair",
    "rollback",
]
