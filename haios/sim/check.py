"""``haios sim check``: verify the simulator's invariants (SPEC §11) from what is on disk.

1. **atomicity** — every (g, phase) is committed on all its participants or on none;
2. **compensation** — every side effect of a rolled-back phase is compensated exactly once (fake-cloud
   ledger), and none of a committed phase is; a HARD_FAILED trace that raised its alert, and a trace
   aborted by a signed override, are excused for the side effects they gave up on;
3. **barrier** — no node began a transition before the previous one had ended on every node;
4. **partition** — no WAL append on a node while it was PARTITIONED (the fault log's intervals);
5. **control files** — every control file of every node verifies (and every WAL), and every data/
   file holds the bytes its manifest names;
6. **audit** — every RECOVERY step in a WAL belongs to a trace that has a commit in the repo's history.

Each violation carries the evidence found; nothing here changes anything.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import controlfile
from ..config import load_repo
from ..config.model import PHASES
from ..errors import HaiosError, RepoError, WalCorruptError
from ..gitrepo import run_git
from ..layout import JOURNAL_DIR
from ..node.manifest import MANIFEST
from ..node.manifest import check as manifest_check
from ..recovery.journal import load as load_journal
from ..recovery.machine import State
from ..wal import Record, RecordType, WalReader
from .cloud import FakeCloud
from .simulator import sim_dir, sim_roots


@dataclass(frozen=True)
class Violation:
    invariant: str
    node: str | None
    g: int | None
    phase: str | None
    detail: str

    def __str__(self) -> str:
        where = " ".join(
            x for x in (self.node or "", f"g={self.g}" if self.g is not None else "", self.phase or "") if x
        )
        return f"[{self.invariant}] {where}: {self.detail}" if where else f"[{self.invariant}] {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "node": self.node, "g": self.g, "phase": self.phase, "detail": self.detail}


@dataclass
class Attempt:
    """One BEGIN_PHASE .. end of (g, phase) on one node."""

    node: str
    g: int
    phase: str
    participants: list[str]
    begin_ts: float
    prepared: bool = False
    ended: str | None = None
    end_ts: float | None = None
    effects: dict[str, dict[str, Any]] | None = None


def _records(root: Path, node: str, violations: list[Violation]) -> list[Record]:
    """Every readable record of the node's WAL; damage is itself reported."""
    records: list[Record] = []
    try:
        for record in WalReader(root / "wal"):
            records.append(record)
    except WalCorruptError as exc:
        c = exc.corruption
        violations.append(Violation("control-files", node, None, None, f"WAL {c.describe()}"))
    return records


def _attempts(node: str, records: list[Record]) -> list[Attempt]:
    attempts: list[Attempt] = []
    current: Attempt | None = None
    for r in records:
        p = r.payload
        if r.type is RecordType.BEGIN_PHASE:
            current = Attempt(node, p["g"], p["phase"], list(p["participants"]), p["ts"], effects={})
            attempts.append(current)
        elif current is not None and (p.get("g"), p.get("phase")) == (current.g, current.phase):
            if r.type is RecordType.PREPARE:
                current.prepared = True
            elif r.type is RecordType.SIDE_EFFECT:
                assert current.effects is not None
                current.effects[p["key"]] = p
            elif r.type in (RecordType.COMMIT_PHASE, RecordType.ABORT_PHASE):
                current.ended, current.end_ts = r.type.name, p["ts"]
    return attempts


def _check_control_files(node: str, root: Path, violations: list[Violation]) -> None:
    paths = [root / name for name in ("state.txt", "policy", "fence", "heartbeat", "gossip", MANIFEST)]
    paths += sorted(root.glob("exec_status_*.txt"))
    for path in paths:
        if not path.exists() and path.name in ("heartbeat", "gossip", MANIFEST):
            continue
        try:
            controlfile.read(path)
        except HaiosError as exc:
            violations.append(Violation("control-files", node, None, None, exc.message))
    for problem in manifest_check(root):  # data/ holds exactly the bytes the phases wrote
        violations.append(Violation("control-files", node, None, None, problem))


def sim_check(directory: Path | str) -> list[Violation]:
    path = Path(directory)
    config = load_repo(path)
    roots = sim_roots(path, config)
    violations: list[Violation] = []
    attempts: dict[str, list[Attempt]] = {}
    records_by_node: dict[str, list[Record]] = {}
    for node, root in sorted(roots.items()):
        _check_control_files(node, root, violations)
        records_by_node[node] = _records(root, node, violations)
        attempts[node] = _attempts(node, records_by_node[node])

    # 1. atomicity: the latest attempt of each (g, phase) on each participant
    latest: dict[tuple[int, str], dict[str, Attempt]] = defaultdict(dict)
    for node, items in attempts.items():
        for a in items:
            latest[(a.g, a.phase)][node] = a
    order = {ph: i for i, ph in enumerate(PHASES)}
    for (g, phase), by_node in sorted(latest.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        participants = sorted({p for a in by_node.values() for p in a.participants})
        committed = [n for n in participants if n in by_node and by_node[n].ended == "COMMIT_PHASE"]
        for n in participants:
            found = by_node.get(n)
            if found is None:
                if committed:
                    violations.append(
                        Violation("atomicity", n, g, phase, "no BEGIN_PHASE although other participants committed")
                    )
            elif found.ended is None:
                missing = (
                    "no COMMIT_PHASE or ABORT_PHASE (PREPARE present)" if found.prepared else "no PREPARE (began only)"
                )
                violations.append(Violation("atomicity", n, g, phase, f"half done: {missing}"))
            elif committed and found.ended != "COMMIT_PHASE":
                violations.append(
                    Violation("atomicity", n, g, phase, f"{found.ended} while {', '.join(committed)} committed")
                )

    # 2. compensation, from the fake cloud's ledger; a HARD_FAILED trace that raised its alert gave
    #    up on the side effects it names (SPEC §11: "or HARD_FAILED with an alert")
    abandoned: set[str] = set()
    for journal_path in sorted((path / JOURNAL_DIR).glob("*.yaml")):
        j = load_journal(journal_path)
        if j.state == State.HARD_FAILED.value and any(a["alert"] == "compensator_timeout" for a in j.alerts):
            abandoned.update(j.compensation)
            abandoned.update(k for step in j.steps for k in step.get("abandoned") or ())
        elif j.state == State.ABORTED.value and any(o["action"] == "abort" for o in j.overrides):
            # supervisors signed an abort: what it left uncompensated was their decision
            abandoned.update(k for step in j.steps for k in step.get("abandoned") or ())
    deletes: dict[str, int] = defaultdict(int)
    for entry in FakeCloud(sim_dir(path) / "cloud").ledger():
        if entry["op"] == "delete" and entry.get("ok"):
            deletes[entry["key"]] += 1
    for node, items in attempts.items():
        for a in items:
            for key in a.effects or {}:
                count = deletes.get(key, 0)
                problem = None
                if a.ended == "ABORT_PHASE" and count == 0 and key in abandoned:
                    continue
                if a.ended == "ABORT_PHASE" and count != 1:
                    problem = f"side effect {key} of a rolled-back phase compensated {count} times"
                elif a.ended == "COMMIT_PHASE" and count:
                    problem = f"side effect {key} of a committed phase was compensated"
                if problem:
                    violations.append(Violation("compensation", node, a.g, a.phase, problem))

    # 3. barrier: a transition begins only after the previous one ended on every node taking part in
    #    it (an evicted node catches up later, alone: the cluster did not wait for it, rightly)
    ends: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)
    for by_node in latest.values():
        for n, a in by_node.items():
            if a.ended == "COMMIT_PHASE" and a.end_ts is not None:
                ends[(a.g, a.phase)][n] = a.end_ts
    for node, items in attempts.items():
        for a in items:
            idx = order[a.phase]
            prev = (a.g, PHASES[idx - 1]) if idx else (a.g - 1, "IDLE")
            prev_end = max((ends[prev][p] for p in {*a.participants, node} if p in ends.get(prev, {})), default=None)
            if prev_end is not None and a.begin_ts < prev_end:
                violations.append(
                    Violation(
                        "barrier", node, a.g, a.phase, f"began before (g={prev[0]}, {prev[1]}) had ended on every node"
                    )
                )

    # 4. partition: no WAL append inside a node's partitioned interval
    faults_path = sim_dir(path) / "faults.jsonl"
    if faults_path.exists():
        for line in faults_path.read_text().splitlines():
            fault = json.loads(line)
            if fault.get("fault") != "partition" or "end" not in fault:
                continue
            for node in fault["nodes"]:
                for r in records_by_node.get(node, []):
                    if fault["start"] <= r.payload.get("ts", 0) <= fault["end"]:
                        violations.append(
                            Violation(
                                "partition",
                                node,
                                fault["g"],
                                fault["phase"],
                                f"WAL append (lamport {r.lamport}, {r.type.name}) while PARTITIONED",
                            )
                        )

    # 6. audit: every RECOVERY step's trace has a commit in the repo
    traces = {r.payload["trace_id"] for recs in records_by_node.values() for r in recs if r.type is RecordType.RECOVERY}
    if traces:
        status, log, err = run_git(path, "log", "--format=%B")
        if status != 0:
            raise RepoError(f"{path}: git log failed: {' '.join(err.split())}")
        audited = {line.split(":", 1)[1].strip() for line in log.splitlines() if line.startswith("Haios-Trace-Id:")}
        for trace in sorted(traces - audited):
            violations.append(
                Violation("audit", None, None, None, f"recovery trace {trace} has no commit in the audit log")
            )
    return violations
