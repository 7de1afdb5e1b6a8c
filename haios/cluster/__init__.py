"""The cluster side: the two-phase-commit PhaseDriver and its participants."""

from .driver import Participant, ParticipantFailed, PhaseDriver, TransitionResult

__all__ = ["Participant", "ParticipantFailed", "PhaseDriver", "TransitionResult"]
