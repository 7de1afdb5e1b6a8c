"""PhaseDriver: a cluster-wide transition ``(g, phase)`` as two-phase commit (SPEC §2.4).

BEGIN on all participants (each runs its phase work and PREPAREs), wait for every PREPARE, then
COMMIT on each. A participant that fails to prepare makes the driver abort the others (presumed
abort); a participant that dies mid-way leaves its half of the transition for recovery to detect.
The driver keeps a vector clock of its own that it sends with every request and merges from every
answer, so the ``phase_transition.started/finished`` events in the nodes' WALs are causally ordered.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from ..clock import wall_time
from ..config.model import PHASES
from ..errors import BarrierError, ParticipantFailed
from ..node.transaction import next_transition
from ..vclock import VClock

COORDINATOR = "coordinator"


class Participant(Protocol):
    name: str

    def prepare(self, g: int, phase: str, participants: list[str], trace_id: str, vc: VClock) -> VClock:
        """BEGIN, run the phase's work, PREPARE; return the participant's clock. Raise ParticipantFailed."""
        ...

    def commit(self, vc: VClock) -> VClock:
        """COMMIT the prepared phase; return the participant's clock. Raise ParticipantFailed."""
        ...

    def abort(self, reason: str) -> None:
        """Roll the phase back on this participant (best effort)."""
        ...


@dataclass
class TransitionResult:
    g: int
    phase: str
    trace_id: str
    outcome: str  # "committed" | "aborted" | "interrupted"
    prepared: list[str] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, ParticipantFailed] = field(default_factory=dict)  # the failures themselves
    started: float = 0.0
    finished: float = 0.0

    @property
    def duration(self) -> float:
        return self.finished - self.started


class PhaseDriver:
    """Runs transitions in order; refuses one that would break PHASE_ORDER_BARRIER."""

    def __init__(
        self,
        participants: list[Participant],
        *,
        last: tuple[int, str | None] = (0, None),
        clock: Callable[[], float] = wall_time,
    ) -> None:
        self.participants = participants
        self.last = last  # the last transition committed cluster-wide
        self.clock = clock
        self.vc = VClock()
        self.history: list[TransitionResult] = []

    def next(self) -> tuple[int, str]:
        return next_transition(*self.last)

    def run(
        self, g: int, phase: str, *, trace_id: str | None = None, stop_after_commits: int | None = None
    ) -> TransitionResult:
        """Run (g, phase). ``stop_after_commits`` simulates the coordinator dying after that many COMMITs."""
        if self.history and self.history[-1].outcome == "interrupted":
            last = self.history[-1]
            raise BarrierError(f"(g={last.g}, {last.phase}) is half done on the cluster; recover it first")
        if phase not in PHASES or (g, phase) != self.next():
            raise BarrierError(f"(g={g}, {phase}) is out of order: the next transition is {self.next()}")
        names = [p.name for p in self.participants]
        result = TransitionResult(g, phase, trace_id or uuid.uuid4().hex, "interrupted", started=self.clock())
        self.history.append(result)
        self.vc = self.vc.tick(COORDINATOR)
        sent = self.vc

        def prepare(p: Participant) -> tuple[str, VClock | None, ParticipantFailed | None]:
            try:
                return p.name, p.prepare(g, phase, names, result.trace_id, sent), None
            except ParticipantFailed as exc:
                return p.name, None, exc

        with ThreadPoolExecutor(max_workers=max(1, len(self.participants))) as pool:
            answers = list(pool.map(prepare, self.participants))
        for name, vc, error in answers:
            if vc is None:
                result.failed[name] = error.message if error else "failed"
                if error is not None:
                    result.errors[name] = error
            else:
                result.prepared.append(name)
                self.vc = self.vc.merge(vc)
        if result.failed:
            for p in self.participants:
                if p.name in result.prepared:
                    p.abort(f"participant(s) {', '.join(sorted(result.failed))} did not prepare")
            result.outcome = "aborted"
            result.finished = self.clock()
            return result
        self.vc = self.vc.tick(COORDINATOR)
        for index, p in enumerate(self.participants):
            if stop_after_commits is not None and index >= stop_after_commits:
                result.finished = self.clock()
                return result  # the coordinator "died": the rest are prepared but not committed
            try:
                self.vc = self.vc.merge(p.commit(self.vc))
                result.committed.append(p.name)
            except ParticipantFailed as exc:
                result.failed[p.name] = exc.message
                result.errors[p.name] = exc
        result.finished = self.clock()
        if not result.failed:
            result.outcome = "committed"
            self.last = (g, phase)
        return result
