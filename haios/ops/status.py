"""What ``haios status`` shows of recovery: every open trace with its compensation attempts, when the
next one may run, its compensators' circuit breakers and its cost; and the membership (evictions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.model import RepoConfig
from ..errors import ConfigError
from ..recovery import journal as journals
from ..recovery import membership as members
from ..recovery.sel import SelStore
from ..timefmt import utc


def open_traces(repo: Path, config: RepoConfig, now: float) -> list[dict[str, Any]]:
    store = SelStore(repo, config.thresholds)
    breakers = store.breakers()
    out = []
    for j in journals.open_journals(repo, []):  # an unreadable journal is doctor's finding, not a row
        attempts = 0
        next_at: float | None = None
        compensators: dict[str, str] = {}
        for key in sorted(j.compensation):
            entry = store.entry(key)
            if entry is None:
                continue
            attempts += entry.failures
            if entry.next_attempt_at is not None and entry.state == "pending":
                next_at = entry.next_attempt_at if next_at is None else min(next_at, entry.next_attempt_at)
            b = breakers.get(entry.compensator)
            compensators[entry.compensator] = (
                b.state(now, config.thresholds.sel_breaker_open_for) if b is not None else "closed"
            )
        if j.state == "BLOCKED_COMPENSATOR" and j.blocked_since is not None:
            next_at = j.blocked_since + config.thresholds.t_blocked  # HARD_FAILED then
        out.append(
            {
                "trace_id": j.trace_id,
                "g": j.g,
                "phase": j.phase,
                "state": j.state,
                "reason": j.reason,
                "attempts": attempts,
                "next_attempt_at": next_at,
                "next_attempt_utc": utc(next_at) if next_at is not None else None,
                "breakers": compensators,
                "cost": j.cost,
                "alerts": [a["alert"] for a in j.alerts],
            }
        )
    return out


def membership(repo: Path) -> dict[str, Any]:
    """Who is evicted or about to be; ``unreadable`` says why nobody can tell (doctor has the finding)."""
    try:
        return members.load(repo).summary()
    except ConfigError as exc:
        return {**members.Membership().summary(), "unreadable": exc.one_line()}
