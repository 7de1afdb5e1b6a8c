"""Recovery (SPEC §4): the per-trace state machine, the decision rule, plans and the executor."""

from .executor import RunResult, TraceOutcome, reconcile
from .machine import Action, Event, InvalidTransition, State, step
from .plan import Plan, TracePlan, build, render_markdown
from .planner import Decision, Inputs, View, decide, steps_for
from .sel import NonRetryable, SelStore

__all__ = [
    "Action",
    "Decision",
    "Event",
    "Inputs",
    "NonRetryable",
    "InvalidTransition",
    "Plan",
    "RunResult",
    "SelStore",
    "State",
    "TraceOutcome",
    "TracePlan",
    "View",
    "build",
    "decide",
    "reconcile",
    "render_markdown",
    "step",
    "steps_for",
]
