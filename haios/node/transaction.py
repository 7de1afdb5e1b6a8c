"""The phase transaction, participant side (SPEC §2.4).

::

    node = Node(root)
    with node.begin(g, "CONSTRUCT", participants=["n1", "n2"]) as tx:   # guards, snapshot, BEGIN_PHASE
        tx.intent("etc/app.conf", b"...")                              # logged before it is applied
        tx.side_effect("vm-1", "fakecloud.vm", {...}, "fakecloud-vm", cost)  # logged before the call
        tx.side_effect_done("vm-1", {"id": "i-123"})
        tx.step("download", "ok")                                       # a resumable sub-step
        tx.prepare()                                                    # PREPARE, then apply to data/
        tx.commit()                                                     # when the coordinator says so

Every record is appended to the node's WAL before the change it describes happens, and the
snapshot of ``data/`` exists before BEGIN_PHASE is durable, so whatever instant a crash hits, what is
on disk allows exactly one of: roll forward (PREPARE is in the WAL: replay the intents) or roll back
(no PREPARE: the snapshot is intact, no intent was applied). ``Node.resume`` reopens a phase after
an executor restart and tells it what is already logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import controlfile
from ..clock import wall_time
from ..config.dataschemas import DataSchema, causal_paths, validate_data
from ..config.model import PHASES, build_thresholds, phase_order
from ..errors import (
    BarrierError,
    ControlFileError,
    HaiosError,
    PartitionError,
    StateBehindError,
    WalCorruptError,
    WalMissingError,
)
from ..timefmt import utc
from ..untrusted import is_number
from ..vclock import VClock
from ..wal import Cursor, Record, RecordType, Wal, phases, read_records
from ..wal.phases import INTERNAL_STEP, PhaseLog
from ..wal.reader import WalReader, cursor_holds, list_segments
from . import manifest, replicas, shapes, snapshot
from .heartbeat import gossip_partitioned
from .paths import confine
from .timing import measure

_END = (RecordType.COMMIT_PHASE, RecordType.ABORT_PHASE)
# the heartbeat window before a policy names one (interval x unhealthy_after of the defaults)
DEFAULT_HEARTBEAT_WINDOW = build_thresholds({}).heartbeat_window
log = logging.getLogger("haios.replication")


def _flush_step(rtype: RecordType, durable: bool) -> str:
    """The recovery-latency step a WAL append counts towards (SPEC §9)."""
    if rtype is RecordType.RECOVERY:
        return "checkpoint_flush"
    return "wal_fsync" if durable else "wal_append"


def next_transition(g: int, ph: str | None) -> tuple[int, str]:
    """The (g, phase) that follows the last committed one; a node that committed nothing starts at (g+1, ANALYZE)."""
    if ph is None or ph == "IDLE":
        return g + 1, "ANALYZE"
    return g, PHASES[PHASES.index(ph) + 1]


@dataclass(frozen=True)
class EndMark:
    """A COMMIT_PHASE or ABORT_PHASE record, with what state.txt keeps of the record that ended a phase."""

    g: int
    phase: str
    ended: str  # "COMMIT_PHASE" | "ABORT_PHASE"
    cursor: Cursor  # where the WAL goes on after it
    start: int  # its offset in its segment
    vc: dict[str, Any]


def crash_window(state: dict[str, Any], missed: int) -> bool:
    """Whether ``missed`` end records past state.txt's cursor are what a crash right after an end
    record leaves: one, of the phase ``state`` says is in progress (more is an older or edited state.txt)."""
    return missed == 1 and state.get("status") == "IN_PHASE"


def scan_phases(
    root: Path, *, records: Iterable[Record] | None = None, begun_at: int | None = None
) -> dict[tuple[int, str], PhaseLog]:
    """The latest attempt of every (g, phase) in the node's WAL (or in ``records``, a part of it);
    with ``begun_at``, the attempt whose BEGIN_PHASE has that Lamport index instead of a later one."""
    return phases.scan(read_records(root / "wal") if records is None else records, begun_at=begun_at)


def intents_digest(intents: list[dict[str, Any]]) -> str:
    """SHA-256 over the canonical JSON of the intents' identifying fields, in order."""
    keys = ("seq", "op", "path", "expected_version", "sha256")
    canon = [{k: i.get(k) for k in keys} for i in intents]
    return hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _cursor_fits(wal: Path, cursor: Cursor, start: int | None) -> bool:
    """Whether the record that ends at the cursor is still the one state.txt recorded.

    A repair may cut the record away and a later append may end at the very same offset, so the
    size alone proves nothing: :func:`haios.wal.reader.cursor_holds` checks the record at ``start``.
    """
    if start is not None:
        return cursor_holds(wal, cursor, start)
    # written before haios kept the start: the size check is all there is
    return any(path.stat().st_size >= cursor.offset for path in wal.glob(f"{cursor.seq:016x}-*.wal"))


class Node:
    """One node root: its state, policy, WAL and phase transactions."""

    def __init__(
        self,
        root: Path | str,
        *,
        clock: Callable[[], float] = wall_time,
        sync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        self.root = Path(root)
        self.clock = clock
        self.sync = sync  # the WAL's fdatasync (the simulator slows it down)
        self._replicator: Any = None  # haios.replication.Replicator, made when the policy asks for one
        self.healed: dict[str, Any] | None = None  # a torn tail restored from a replica (open_wal)
        state, _ = controlfile.read_mapping(self.root / "state.txt")
        wrong = shapes.problem("state.txt", state)
        if wrong is not None:  # not a state.txt haios wrote: nothing here may act on it
            raise ControlFileError(self.root / "state.txt", f"not a node's state: {wrong}")
        self.name: str = state["node"]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def state(self) -> tuple[dict[str, Any], int]:
        return controlfile.read_mapping_cached(self.root / "state.txt")

    def partitioned(self) -> bool:
        """Whether this node's gossip says PARTITIONED, and says it now: a gossip file nobody has
        rewritten within the heartbeat window (its writer stopped) leaves the node free to work."""
        path = self.root / "gossip"
        if not path.exists():
            return False
        body, _ = controlfile.read_mapping(path)
        return gossip_partitioned(body, self.clock(), self._heartbeat_window())

    def _heartbeat_window(self) -> float:
        """interval x unhealthy_after from the pushed policy; the defaults before one was pushed."""
        try:
            pushed = self.policy.get("thresholds") if (self.root / "policy").exists() else None
        except HaiosError:
            pushed = None
        if not isinstance(pushed, dict):
            return DEFAULT_HEARTBEAT_WINDOW
        interval: Any = pushed.get("heartbeat_interval")
        after: Any = pushed.get("heartbeat_unhealthy_after")
        if is_number(interval) and is_number(after) and interval > 0 and after > 0:
            return float(interval * after)
        return DEFAULT_HEARTBEAT_WINDOW

    @property
    def policy(self) -> dict[str, Any]:
        """The compiled desired state reconcile pushed; parsed again only when it changes (it holds
        the whole membership, so parsing it is the expensive part)."""
        return controlfile.read_mapping_cached(self.root / "policy")[0]

    def data_schemas(self) -> list[DataSchema]:
        """The schemas for data/ files that reconcile pushed in the policy file."""
        return [DataSchema.from_dict(s) for s in self.policy.get("data_schemas") or []]

    def max_g(self) -> int | None:
        value = self.policy.get("max_g")
        return int(value) if value is not None else None

    def _tail(self) -> Iterator[Record]:
        """The WAL's records after the last COMMIT/ABORT that state.txt knows of.

        A node runs one phase at a time, so an open phase always begins after the last record that
        ended one; state.txt keeps where that record ends (``wal_cursor``), so only the tail is read.
        A crash before state.txt was updated only makes the read start a little earlier. A cursor that
        no longer fits the WAL (repaired, replaced) falls back to reading it whole.
        """
        state, _ = self.state()
        saved = state.get("wal_cursor")
        if saved and not _cursor_fits(self.root / "wal", Cursor(**saved), state.get("wal_record_start")):
            saved = None  # the WAL was cut below it (a repaired torn tail): read it whole
        if saved:
            started = False
            try:
                for record in read_records(self.root / "wal", cursor=Cursor(**saved)):
                    started = True
                    yield record
                return
            except WalCorruptError:
                if started:
                    raise  # real damage after the cursor, not a stale cursor
        yield from read_records(self.root / "wal")

    def unrecorded_ends(self) -> tuple[list[EndMark], list[Record]]:
        """The COMMIT_PHASE and ABORT_PHASE records that state.txt does not know of, in WAL order, and
        the records read to find them (the WAL's tail).

        state.txt is rewritten after every record that ends a phase, with where that record ends
        (``wal_cursor``); so every end record after the cursor is one it missed: a crash between the
        record and the rewrite, or an older state.txt put back. When the cursor no longer fits the
        WAL (a repaired tail), the whole WAL is read and only commits past state.txt's (g, ph) count.
        """
        state, _ = self.state()
        saved = Cursor(**state["wal_cursor"]) if state.get("wal_cursor") else None
        fits = saved is not None and _cursor_fits(self.root / "wal", saved, state.get("wal_record_start"))
        reader = WalReader(self.root / "wal", cursor=saved if fits else None)
        position = phase_order(int(state.get("g") or 0), state.get("ph"))
        ends: list[EndMark] = []
        records: list[Record] = []
        for record in reader:
            records.append(record)
            if record.type not in _END:
                continue
            p = record.payload
            if (
                saved
                and not fits
                and (record.type is not RecordType.COMMIT_PHASE or phase_order(p["g"], p["phase"]) <= position)
            ):
                continue
            assert reader.cursor is not None
            ends.append(EndMark(p["g"], p["phase"], record.type.name, reader.cursor, record.offset, p.get("vc") or {}))
        return ends, records

    def open_phase(self, tail: Iterable[Record] | None = None) -> PhaseLog | None:
        """The phase this node began and neither committed nor aborted, if any (``tail``: the
        records after state.txt's cursor, when the caller has read them already)."""
        logs = scan_phases(self.root, records=self._tail() if tail is None else tail).values()
        open_logs = [log for log in logs if log.ended is None]
        return max(open_logs, key=lambda log: log.begin_lamport) if open_logs else None

    def replicator(self) -> Any:
        """The node's WAL replicator (SPEC §6.1), or None when the policy leaves replication off."""
        if self._replicator is None:
            replication = replicas.installed(self.root, self.policy)
            found = replication.replicator_for(self.name, self.root, self.policy, self.clock) if replication else None
            self._replicator = found or False
        return self._replicator or None

    def close(self) -> None:
        """Stop replicating (wait for the peers' streams to finish); the node can be used again after."""
        if self._replicator:
            self._replicator.close()
        self._replicator = None

    def _wal(self) -> Wal:
        return self.open_wal(read_only=self.partitioned())

    def open_wal(self, *, read_only: bool = False) -> Wal:
        """The node's WAL, with the replicator attached when replication is on.

        A replicated node whose WAL is gone refuses to start a new one (WalMissingError). A torn tail
        is first offered to the replicas: when a peer holds the records the tail lost (they were
        acknowledged before the disk lost them), the WAL is restored from it; otherwise the torn
        bytes are cut as without replication (kept in ``.broken``).
        """
        replicator = None if read_only else self.replicator()
        wal_dir = self.root / "wal"
        if replicator is None:
            return Wal.open(wal_dir, read_only=read_only, sync=self.sync)
        if not list_segments(wal_dir):
            state, _ = self.state()
            if state.get("wal_cursor"):
                raise WalMissingError(
                    f"{wal_dir}: node {self.name} has committed transitions but its WAL is gone",
                    hint=f"restore it from its replicas: haios node rejoin {self.name}",
                )
        try:
            wal = Wal.open(wal_dir, sync=self.sync, repair_torn_tail=False)
        except WalCorruptError as exc:
            if not exc.corruption.torn_tail:
                raise
            self.healed = self._heal_torn_tail(replicator)
            wal = Wal.open(wal_dir, sync=self.sync)  # cuts what is still torn
        wal.replicator = replicator
        return wal

    def _heal_torn_tail(self, replicator: Any) -> dict[str, Any] | None:
        """Restore the WAL from a replica that holds more than the torn WAL's good part, if one does."""
        replication = replicas.installed(self.root, self.policy)
        if replication is None:
            return None
        try:
            result = replication.heal(self.root, replicator.links)
        except HaiosError as exc:
            log.warning("%s: torn WAL tail; no replica holds more (%s): cutting it", self.name, exc.one_line())
            return None
        log.warning(
            "%s: torn WAL tail replaced by %s's replica (up to lamport %s; the torn WAL kept as %s)",
            self.name,
            result.source,
            result.last_lamport,
            result.kept,
        )
        healed: dict[str, Any] = result.as_dict()
        return healed

    def pruned(self) -> frozenset[str]:
        """The nodes whose vector-clock entries the cluster has pruned (SPEC §7): the policy's
        ``vclock_pruned``; this node's clocks no longer carry them."""
        try:
            names = self.policy.get("vclock_pruned") if (self.root / "policy").exists() else None
        except HaiosError:
            names = None
        if not isinstance(names, list):
            return frozenset()
        return frozenset(n for n in names if isinstance(n, str) and n != self.name)  # never its own counter

    def _vclock(self) -> VClock:
        last: Record | None = None
        for record in self._tail():
            last = record
        if last is not None:
            vc = VClock.from_json(last.payload.get("vc", {}))
        else:
            vc = VClock.from_json(self.state()[0].get("vc") or {})
        return vc.without(self.pruned())

    def append(
        self,
        g: int,
        phase: str,
        trace_id: str,
        rtype: RecordType,
        fields: dict[str, Any],
        *,
        durable: bool = True,
        seen: VClock | None = None,
    ) -> int:
        """Append one record about (g, phase) whether or not that phase is open (recovery checkpoints);
        ``seen``: a clock the record's event has seen (merged into the node's)."""
        if self.partitioned():
            raise PartitionError(f"{self.root}: node {self.name} is PARTITIONED; its WAL is read-only")
        with self._wal() as wal:
            with measure("vc_merge"):
                vc = self._vclock()
                if seen is not None:
                    vc = vc.merge(seen).without(self.pruned())
                vc = vc.tick(self.name)
            payload = {
                "node": self.name,
                "g": g,
                "phase": phase,
                "trace_id": trace_id,
                "ts": self.clock(),
                "vc": vc.to_json(),
                **fields,
            }
            with measure(_flush_step(rtype, durable)):
                return wal.append(rtype, payload, durable=durable)

    def begin(self, g: int, phase: str, *, participants: list[str], trace_id: str | None = None) -> PhaseTx:
        """Enter (g, phase): guards, snapshot of data/, BEGIN_PHASE (durable), exec_status IN_PROGRESS."""
        if phase not in PHASES:
            raise BarrierError(f"{self.root}: unknown phase {phase!r}")
        if self.partitioned():
            raise PartitionError(f"{self.root}: node {self.name} is PARTITIONED; {phase} of g={g} refused")
        state, version = self.state()
        expected = next_transition(state["g"], state["ph"])
        owed = state.get("uncompensated") or []
        if owed:
            first = owed[0]
            raise BarrierError(
                f"{self.root}: (g={first['g']}, {first['phase']}) was rolled back on {self.name} with side effects "
                f"not compensated yet ({', '.join(first['keys'])}); {phase} of g={g} must wait",
                hint="run 'haios reconcile': it compensates them",
            )
        missed, tail = self.unrecorded_ends()
        if missed:
            last = missed[-1]
            raise StateBehindError(
                f"{self.root}: state.txt of {self.name} does not know that its WAL ended (g={last.g}, {last.phase}) "
                f"with {last.ended} ({len(missed)} end record(s) past it); {phase} of g={g} refused"
            )
        opened = self.open_phase(tail)
        if opened is not None:
            raise BarrierError(
                f"{self.root}: (g={opened.g}, {opened.phase}) is still open on {self.name}",
                hint="resume it (Node.resume / haios node begin --resume) or let recovery finish it",
            )
        if (g, phase) != expected:
            raise BarrierError(
                f"{self.root}: (g={g}, {phase}) would break the phase order on {self.name}: "
                f"last committed (g={state['g']}, {state['ph']}), next is (g={expected[0]}, {expected[1]})"
            )
        limit = self.max_g()
        if limit is not None and g > limit:
            raise BarrierError(
                f"{self.root}: g={g} is beyond max_g={limit} (the desired state freezes the cluster)",
                hint="raise or remove max_g in desired/state.yaml, commit, and run 'haios reconcile'",
            )
        if self.policy.get("suspend") is True:
            raise BarrierError(
                f"{self.root}: {phase} of g={g} refused on {self.name}: the desired state suspends the cluster",
                hint="set suspend: false in desired/state.yaml, commit, and run 'haios reconcile'",
            )
        name = snapshot.snapshot_name(g, phase)
        _, snapshot_bytes = snapshot.take(self.root, name)  # before BEGIN_PHASE: a logged BEGIN has its snapshot
        trace = trace_id or uuid.uuid4().hex
        wal = self._wal()
        tx = PhaseTx(self, wal, PhaseLog(g, phase, trace, name, list(participants), 0), self._vclock())
        try:
            tx.log.begin_lamport = tx._append(
                RecordType.BEGIN_PHASE,
                {"snapshot": name, "participants": list(participants), "snapshot_bytes": snapshot_bytes},
            )
            now = self.clock()
            controlfile.write_mapping(
                self.root / f"exec_status_{g}.txt",
                {"g": g, "phase": phase, "status": "IN_PROGRESS", "started_at": utc(now), "updated_at": utc(now)},
                expected_version=controlfile.current_version(self.root / f"exec_status_{g}.txt"),
            )
            controlfile.write_mapping(
                self.root / "state.txt", {**state, "status": "IN_PHASE"}, expected_version=version
            )
        except BaseException:
            wal.close()
            raise
        return tx

    def resume(self, g: int, phase: str) -> PhaseTx:
        """Reopen the open (g, phase) after an executor restart; the transaction knows what is logged."""
        log = scan_phases(self.root, records=self._tail()).get((g, phase))
        if log is None or log.ended is not None:
            raise BarrierError(f"{self.root}: (g={g}, {phase}) is not open on {self.name}; nothing to resume")
        if self.partitioned():
            raise PartitionError(f"{self.root}: node {self.name} is PARTITIONED; cannot resume {phase} of g={g}")
        return PhaseTx(self, self._wal(), log, self._vclock())


class PhaseTx:
    """An open phase on one node. Use it as a context manager; leaving it does not commit or abort."""

    def __init__(self, node: Node, wal: Wal, log: PhaseLog, vc: VClock) -> None:
        self.node = node
        self.wal = wal
        self.log = log
        self.vc = vc

    # what is already logged (for resuming)
    @property
    def g(self) -> int:
        return self.log.g

    @property
    def phase(self) -> str:
        return self.log.phase

    @property
    def completed_steps(self) -> dict[str, Any]:
        """The sub-steps the phase's command logged (not those haios logs itself, ``haios.*``)."""
        return {name: outcome for name, outcome in self.log.steps.items() if not name.startswith(INTERNAL_STEP)}

    @property
    def intents(self) -> list[dict[str, Any]]:
        return list(self.log.intents)

    @property
    def prepared(self) -> bool:
        return self.log.prepared is not None

    def _append(self, rtype: RecordType, fields: dict[str, Any], *, durable: bool = True) -> int:
        with measure("vc_merge"):
            self.vc = self.vc.tick(self.node.name)
        payload = {
            "node": self.node.name,
            "g": self.log.g,
            "phase": self.log.phase,
            "trace_id": self.log.trace_id,
            "ts": self.node.clock(),
            "vc": self.vc.to_json(),
            **fields,
        }
        with measure(_flush_step(rtype, durable)):
            return self.wal.append(rtype, payload, durable=durable)

    def _check_open(self, *, before_prepare: bool = False) -> None:
        if self.log.ended is not None:
            raise BarrierError(f"(g={self.g}, {self.phase}) already ended with {self.log.ended}")
        if before_prepare and self.prepared:
            raise BarrierError(f"(g={self.g}, {self.phase}) is prepared: no more intents or side effects")

    def observe(self, vc: VClock) -> None:
        """Merge a clock received from another process (the coordinator) into this phase's clock
        (without the entries of pruned nodes)."""
        self.vc = self.vc.merge(vc).without(self.node.pruned())

    def event(self, name: str, **fields: Any) -> int:
        """Append an EVENT record (``phase_transition.started`` / ``finished``) carrying the vector clock."""
        return self._append(RecordType.EVENT, {"name": name, **fields}, durable=False)

    def intent(self, path: str, content: bytes | None, *, expected_version: int | None | str = "current") -> int:
        """Log a change to ``data/<path>`` (``content`` None: delete); returns its sequence number.

        ``expected_version`` defaults to the file's version now (None: it must not exist).
        """
        self._check_open(before_prepare=True)
        target = confine(self.node.data, path)  # refuses a path that would leave data/
        if any(i["path"] == path for i in self.log.intents):
            # One intent per file and phase keeps replay idempotent: log the file's final content once.
            raise HaiosError(f"{path}: this phase already has an intent for it", hint="log the final content once")
        if expected_version == "current":
            expected_version = manifest.load(self.node.root).version_of(path)
        seq = len(self.log.intents) + 1
        fields: dict[str, Any] = {
            "seq": seq,
            "path": path,
            "expected_version": expected_version,
            "base_sha256": manifest.file_sha256(target),  # what the phase read: applying checks it is still so
        }
        if content is None:
            fields.update(op="delete", sha256=None)
        else:
            fields.update(
                op="write",
                sha256=hashlib.sha256(content).hexdigest(),
                content_b64=base64.b64encode(content).decode("ascii"),
            )
        self._append(RecordType.INTENT, fields, durable=False)
        self.log.intents.append({**fields, "vc": self.vc.to_json()})  # as a replay reads it from the WAL
        return seq

    def side_effect(self, key: str, kind: str, params: dict[str, Any], compensator: str, cost: dict[str, Any]) -> None:
        """Log an external call **before** it is made (durable: its outcome may never be known)."""
        self._check_open(before_prepare=True)
        if key in self.log.side_effects:
            if self.log.side_effects[key]["params"] != params:
                raise HaiosError(f"side effect {key!r} was logged with other parameters", hint="use a new key")
            return
        fields = {"key": key, "kind": kind, "params": params, "compensator": compensator, "cost": cost}
        self._append(RecordType.SIDE_EFFECT, fields)
        self.log.side_effects[key] = fields

    def side_effect_done(self, key: str, result: Any) -> None:
        self._check_open()
        if key not in self.log.side_effects:
            raise HaiosError(f"side effect {key!r} was never logged", hint="log it with side_effect() before the call")
        self._append(RecordType.SIDE_EFFECT_DONE, {"key": key, "result": result})
        self.log.done[key] = result

    def step(self, name: str, outcome: Any, *, durable: bool = True) -> None:
        """Record a completed sub-step, so that a restarted executor can skip it (``durable`` False:
        synced with the next record that is, for a step whose loss costs nothing but a resume)."""
        self._check_open()
        self._append(RecordType.STEP, {"name": name, "outcome": outcome}, durable=durable)
        self.log.steps[name] = outcome

    def prepare(self) -> str:
        """Log PREPARE (everything is now in the WAL), then apply the intents to data/. Returns the digest."""
        self._check_open()
        schemas = self.node.data_schemas()
        if not self.prepared:  # never PREPARE what cannot be applied: a bad file is an abort, not a commit
            check_intents(self.log.intents, schemas)
        digest = intents_digest(self.log.intents)
        if not self.prepared:
            data_bytes = sum(len(base64.b64decode(i["content_b64"])) for i in self.log.intents if i["op"] == "write")
            fields = {"intent_count": len(self.log.intents), "digest": digest, "data_bytes": data_bytes}
            self._append(RecordType.PREPARE, fields)
            self.log.prepared = digest
        apply_intents(self.node.data, self.log.intents, schemas)
        return digest

    def commit(self) -> None:
        """COMMIT_PHASE, then state.txt (g, ph) and exec_status DONE."""
        self._check_open()
        if not self.prepared:
            raise BarrierError(f"(g={self.g}, {self.phase}) cannot commit before PREPARE")
        self._append(RecordType.COMMIT_PHASE, {"digest": self.log.prepared})
        self.log.ended = "COMMIT_PHASE"
        state, version = self.node.state()
        controlfile.write_mapping(
            self.node.root / "state.txt",
            {**state, "g": self.g, "ph": self.phase, "status": "READY", **self._end_marks()},
            expected_version=version,
        )
        self._exec_status("DONE")
        snapshot.drop(self.node.root, self.log.snapshot)
        self.close()

    def abort(self, reason: str, *, abandoned: list[str] | None = None) -> None:
        """Roll data/ back to the BEGIN snapshot and log ABORT_PHASE.

        Side effects are not undone here: recovery compensates every SIDE_EFFECT of an aborted phase
        that has no COMPENSATED record (SPEC §4.3); ``abandoned`` names those a HARD_FAILED trace gave
        up on, which are then no longer owed.
        """
        self._check_open()
        with measure("snapshot_apply"):
            snapshot.restore(self.node.root, self.log.snapshot)
        fields: dict[str, Any] = {"reason": reason}
        if abandoned:
            fields["abandoned"] = list(abandoned)
        self._append(RecordType.ABORT_PHASE, fields)
        self.log.ended = "ABORT_PHASE"
        self.log.abandoned = list(abandoned or [])
        state, version = self.node.state()
        owed = [k for k in self.log.side_effects if k not in self.log.compensated and k not in self.log.abandoned]
        marks: dict[str, Any] = {}
        if owed:
            # recovery must compensate these before this node begins anything again
            entry = {"g": self.g, "phase": self.phase, "begin_lamport": self.log.begin_lamport, "keys": owed}
            marks["uncompensated"] = [*(state.get("uncompensated") or []), entry]
        controlfile.write_mapping(
            self.node.root / "state.txt",
            {**state, "status": "READY", **self._end_marks(), **marks},
            expected_version=version,
        )
        self._exec_status("FAILED")
        self.close()

    def _end_marks(self) -> dict[str, Any]:
        """What state.txt keeps of the record that just ended the phase: where the WAL goes on, the clock."""
        return {
            "wal_cursor": asdict(self.wal.position()),
            "wal_record_start": self.wal.last_record_start,
            "vc": self.vc.to_json(),
        }

    def _exec_status(self, status: str) -> None:
        path = self.node.root / f"exec_status_{self.g}.txt"
        now = utc(self.node.clock())
        body, version = controlfile.read_mapping(path) if path.exists() else ({}, controlfile.current_version(path))
        if body.get("phase") != self.phase:  # killed between BEGIN_PHASE and the file's write: written whole now
            body = {"g": self.g, "phase": self.phase, "started_at": utc(self.log.begin_ts or self.node.clock())}
        body.update(status=status, updated_at=now)
        controlfile.write_mapping(path, body, expected_version=version)

    def close(self) -> None:
        self.wal.close()

    def __enter__(self) -> PhaseTx:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_intents(intents: list[dict[str, Any]], schemas: list[DataSchema]) -> None:
    """Validate every file the intents write against the data schemas that cover it (DataSchemaError)."""
    for intent in intents:
        if intent["op"] == "write":
            validate_data(intent["path"], base64.b64decode(intent["content_b64"]), schemas)


def apply_intents(data: Path, intents: list[dict[str, Any]], schemas: list[DataSchema] | None = None) -> int:
    """Apply logged intents to ``data`` (the files byte for byte, then the node's manifest), skipping
    those already applied.

    Every written file is validated first against ``schemas`` (a replay validates too). Returns how
    many were applied now. A file whose manifest version is neither the expected one nor the intended
    one raises VersionConflict; one changed outside any phase, DataDriftError (see :mod:`.manifest`).
    """
    check_intents(intents, schemas or [])
    causal = causal_paths(schemas or [])
    return manifest.apply(data.parent, intents, lambda intent: base64.b64decode(intent["content_b64"]), causal)
