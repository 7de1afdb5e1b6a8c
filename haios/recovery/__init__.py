"""Recovery (SPEC §4), the core: the per-trace state machine, the decision rule, assessing one
transition, the trace runner driven by the machine, compensation under the side-effect ledger.
It writes only its own files (journals, the ledger); :mod:`haios.ops` opens everything else."""

from ..errors import InvalidTransition, NonRetryable
from .machine import Action, Event, State, step
from .model import Plan, RunResult, StepAction, TraceOutcome, TracePlan, Verdict
from .planner import Decision, Inputs, View, decide, steps_for
from .sel import SelStore

__all__ = [
    "Action",
    "Decision",
    "Event",
    "Inputs",
    "InvalidTransition",
    "NonRetryable",
    "Plan",
    "RunResult",
    "SelStore",
    "State",
    "StepAction",
    "TraceOutcome",
    "TracePlan",
    "Verdict",
    "View",
    "decide",
    "step",
    "steps_for",
]
