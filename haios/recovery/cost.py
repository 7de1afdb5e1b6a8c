"""The cost circuit breaker (SPEC §4.4): what a trace's side effects and their compensations cost,
per region and converted with ``policies/fx.yaml``, against the region's limit; and the create/delete
swing limit of each resource a rollback would delete again."""

from __future__ import annotations

from typing import Any

from ..budget import FX_FILE, trace_cost
from ..errors import UnknownCurrency
from .model import Context, StepAction, TracePlan
from .sel import SelStore, resource_of

COST_ALERT = "COST_CAP_EXCEEDED"  # SPEC §4.4: the cost cap or the swing limit halted automation
BUDGET_FILE = "policies/budget.yaml"


def region_of(ctx: Context, node: str) -> str | None:
    try:
        return ctx.config.cluster.node(node).region
    except KeyError:
        return None


def cost_breach(
    ctx: Context,
    trace: TracePlan,
    store: SelStore,
    upcoming: tuple[str, str, dict[str, Any]] | None = None,
    next_steps: list[dict[str, Any]] | None = None,
) -> tuple[str | None, list[dict[str, Any]]]:
    """SPEC §4.4's cost circuit breaker for a rollback: the trace's cost so far (its side effects and
    the compensations run for them, converted per region with policies/fx.yaml) — plus, as
    ``upcoming`` ``(node, what, cost)``, the run about to start — against the region's limit, and the
    create/delete swing limit of every resource still to be compensated (``next_steps``, default the
    trace's compensations). Returns the reason automation must stop (None: it may go on) and the cost
    per region so far."""
    budget = ctx.config.budget
    items: list[tuple[str | None, str, dict[str, Any] | None]] = []
    for spent in trace.spent:
        region = region_of(ctx, spent["node"])
        items.append((region, f"side effect {spent['key']} on {spent['node']}", spent.get("cost")))
        entry = store.entry(spent["key"])
        if entry is not None and entry.cost:
            items.append((region, f"compensation of {spent['key']}", entry.cost))
    try:
        totals = trace_cost(items, budget, ctx.config.fx)
        cost = [t.as_dict() for t in totals.values()]
        over = [t for t in totals.values() if t.over]
        if over:
            return f"{COST_ALERT}: the trace has cost {'; '.join(str(t) for t in over)}", cost
        if upcoming is not None:
            node, what, more = upcoming
            after = trace_cost([*items, (region_of(ctx, node), what, more)], budget, ctx.config.fx)
            over = [t for t in after.values() if t.over]
            if over:
                return f"{COST_ALERT}: {what} would bring the trace to {'; '.join(str(t) for t in over)}", cost
    except UnknownCurrency as exc:
        return f"the cost cap cannot be checked: {(ctx.config.blocking(FX_FILE) or [exc.message])[0]}", []
    for s in trace.steps if next_steps is None else next_steps:
        if s["action"] != StepAction.COMPENSATE:
            continue
        resource = resource_of(s.get("kind", ""), s.get("params") or {})
        deletes = store.deletes_within(resource, ctx.now, budget.swing_window)
        if deletes >= budget.swing_limit:
            return (
                f"{COST_ALERT}: {resource} was created and deleted {deletes} times within "
                f"{budget.swing_window / 60:g} min (swing limit {budget.swing_limit}); deleting it again needs a human",
                cost,
            )
    return None, cost
