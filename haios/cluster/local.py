"""An in-process participant: a node root on this machine plus the phase's work as a function."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import replication as _replication  # noqa: F401 - plugs WAL replication into the nodes run here
from ..errors import HaiosError, ParticipantFailed
from ..node import Node, PhaseTx
from ..vclock import VClock

Work = Callable[[PhaseTx], None]


class LocalParticipant:
    """Runs ``work(tx)`` between BEGIN_PHASE and PREPARE on a local node root."""

    def __init__(self, root: Path | str, work: Work) -> None:
        self.node = Node(root)
        self.name = self.node.name
        self.work = work
        self.tx: PhaseTx | None = None

    def prepare(self, g: int, phase: str, participants: list[str], trace_id: str, vc: VClock) -> VClock:
        try:
            self.tx = self.node.begin(g, phase, participants=participants, trace_id=trace_id)
            self.tx.observe(vc)
            self.tx.event("phase_transition.started")
            self.work(self.tx)
            self.tx.prepare()
        except HaiosError as exc:
            raise ParticipantFailed(f"{self.name}: {exc.one_line()}") from exc
        return self.tx.vc

    def commit(self, vc: VClock) -> VClock:
        if self.tx is None:
            raise ParticipantFailed(f"{self.name}: nothing prepared")
        try:
            self.tx.observe(vc)
            self.tx.event("phase_transition.finished")
            self.tx.commit()
        except HaiosError as exc:
            raise ParticipantFailed(f"{self.name}: {exc.one_line()}") from exc
        return self.tx.vc

    def abort(self, reason: str) -> None:
        if self.tx is not None and self.tx.log.ended is None:
            self.tx.abort(reason)
