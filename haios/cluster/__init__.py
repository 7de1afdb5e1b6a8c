"""The cluster side: the two-phase-commit PhaseDriver and its participants."""

from ..errors import ParticipantFailed
from .driver import Participant, PhaseDriver, TransitionResult
from .local import LocalParticipant

__all__ = ["LocalParticipant", "Participant", "ParticipantFailed", "PhaseDriver", "TransitionResult"]
