"""A participant reached over the transport: ``haios node participate ROOT`` on the node, one
conversation (an :class:`~haios.transport.base.Exchange`) kept open for the whole ``haios run``."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from ..config.model import PhasePolicy
from ..errors import CommandFailed, HaiosError, ParticipantFailed
from ..node.runner import participate as participate_here
from ..transport.base import Exchange, Transport
from ..vclock import VClock

SERVE = ["node", "participate"]


def open_exchange(transport: Transport, node: str, silence: float) -> Exchange:
    """The conversation with the member's participant server. A prepare lasts as long as the phase's
    command (the node stops it at its timeout); the node sends ALIVE lines meanwhile, and a member
    silent for longer than ``silence`` seconds (the heartbeat window) is taken as gone."""
    return transport.exchange(node, command=SERVE, handler=participate_here, timeout=silence)


def _clock(answer: dict[str, Any], name: str) -> VClock:
    try:
        return VClock.from_json(answer.get("vc") or {})
    except (TypeError, ValueError) as exc:
        raise ParticipantFailed(f"{name}: its answer carries no valid vector clock ({exc})") from exc


class RemoteParticipant:
    """One member of a ``haios run`` transition (:class:`haios.cluster.driver.Participant`)."""

    def __init__(self, name: str, exchange: Exchange, phases: Mapping[str, PhasePolicy]) -> None:
        self.name = name
        self.exchange = exchange
        self.phases = phases
        self.at: tuple[int, str] | None = None  # the transition prepared
        self.last: dict[str, Any] = {}  # the node's last answer

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = self.exchange.request(request)
        except HaiosError as exc:  # kept as the cause: a coordinator tells a partition from a lost link
            said = exc.message if exc.message.startswith(f"{self.name}: ") else f"{self.name}: {exc.message}"
            raise ParticipantFailed(said) from exc
        if not isinstance(answer, dict) or answer.get("outcome") not in ("prepared", "committed", "aborted"):
            raise ParticipantFailed(f"{self.name}: an answer that is not a participant's: {str(answer)[:200]}")
        self.last = answer
        return answer

    def prepare(self, g: int, phase: str, participants: list[str], trace_id: str, vc: VClock) -> VClock:
        policy = self.phases.get(phase) or PhasePolicy()
        self.at = (g, phase)
        answer = self._ask(
            {
                "op": "prepare",
                "g": g,
                "phase": phase,
                "participants": participants,
                "trace_id": trace_id,
                "vc": vc.to_json(),
                "command": list(policy.command or ()),
                "timeout": policy.timeout,
                "resumable": policy.resumable,
            }
        )
        if answer["outcome"] != "prepared":
            raise CommandFailed(f"{self.name}: {phase} of g={g} aborted: {answer.get('reason') or 'no reason given'}")
        return _clock(answer, self.name)

    def commit(self, vc: VClock) -> VClock:
        if self.at is None:
            raise ParticipantFailed(f"{self.name}: nothing prepared")
        g, phase = self.at
        answer = self._ask({"op": "commit", "g": g, "phase": phase, "vc": vc.to_json()})
        if answer["outcome"] != "committed":
            raise ParticipantFailed(f"{self.name}: (g={g}, {phase}) was not committed: {answer['outcome']}")
        return _clock(answer, self.name)

    def abort(self, reason: str) -> None:
        if self.at is None:
            return
        g, phase = self.at
        with contextlib.suppress(HaiosError):  # best effort: recovery rolls back what is left open
            self._ask({"op": "abort", "g": g, "phase": phase, "reason": reason})
