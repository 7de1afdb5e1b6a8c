"""The cluster side: the two-phase-commit PhaseDriver and its participants."""

from .driver import Participant, ParticipantFailed, PhaseDriver, TransitionResult
from .local import LocalParticipant

__all__ = ["LocalParticipant", "Participant", "ParticipantFailed", "PhaseDriver", "TransitionResult"]
