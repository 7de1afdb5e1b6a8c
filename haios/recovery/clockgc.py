"""Vector-clock GC with tombstones (SPEC §7), run by reconcile; and the check of a re-ingested log.

A node decommissioned for longer than ``clocks.vclock_retention`` (90 days) keeps an entry in every
live member's clock for ever unless it is pruned. Each reconcile, for every such node without a
tombstone:

1. its **final clock** — the clock of the last record of its WAL — is read from the node itself,
   or, when it is gone, from the replicas of its WAL its peers hold (the most advanced copy);
2. every **active member** is made to see it (the node operation ``see``, fenced on the policy
   shard: an EVENT ``vclock.merged`` when the member had not seen that counter yet). The entry is
   *stable* once every one of them has: dropping it then changes no comparison between the events
   that remain. A member that cannot be reached, or that has seen a *higher* counter than the log
   read shows (the copy read is not the last one), leaves the node waiting, with the reason;
3. a **tombstone** ``(node, last_counter, last_vc_hash)`` is written to
   ``status/vclock-tombstones.yaml`` (and committed with the run); the compiled policy then lists
   the node under ``vclock_pruned``, and each member drops the entry from its clocks from the next
   push on.

:func:`check_log` is the forensic check of a log that comes back under a tombstoned name — an
archived WAL imported with ``haios wal import``, or a node rejoining under a decommissioned name:
its last own event must carry exactly the tombstone's counter and clock hash, or it is
FORENSIC_MISMATCH (nothing of it is merged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ..config.yamlload import load_status
from ..controlfile import dump_mapping
from ..coord import new_holder
from ..errors import ConfigError, HaiosError, LockHeldError
from ..fsutil import atomic_write, makedirs_durable
from ..layout import TOMBSTONES_FILE
from ..node.fence import POLICY_SHARD
from ..timefmt import utc
from ..vclock import Event, Tombstone, VClock, check_reingest, due_for_pruning, tombstone_for
from .model import Context

SCHEMA = "haios-vclock-tombstones/v1"


@dataclass(frozen=True)
class Stone:
    """A tombstone as the repo keeps it: what is left of the node's entry, and when."""

    tombstone: Tombstone
    decommissioned_since: str | None
    pruned_at: float
    source: str  # where its final clock was read: "node-4" or "node-2's replica"
    revived_at: float | None = None  # the name took part again after a rejoin that matched it

    def to_json(self) -> dict[str, Any]:
        t = self.tombstone
        return {
            "last_counter": t.last_counter,
            "last_vc_hash": t.last_vc_hash,
            "decommissioned_since": self.decommissioned_since,
            "pruned_at": utc(self.pruned_at),
            "pruned_ts": self.pruned_at,
            "source": self.source,
            "revived_at": utc(self.revived_at) if self.revived_at is not None else None,
            "revived_ts": self.revived_at,
        }


def load(repo: Path) -> dict[str, Stone]:
    """The tombstones the repo holds, by node; ConfigError naming the file when it is not one haios
    wrote (every entry is checked for its type: the file may have been edited by anyone)."""
    path = repo / TOMBSTONES_FILE
    doc = load_status(path, "a tombstone record", TOMBSTONES_FILE)
    if doc is None:
        return {}
    stones = doc.get("tombstones") if isinstance(doc, dict) and doc.get("schema") == SCHEMA else None
    if not isinstance(stones, dict):
        raise ConfigError(
            f"{path}: not a tombstone record (schema {SCHEMA} with a mapping 'tombstones')",
            hint=f"restore it from git (git checkout -- {TOMBSTONES_FILE})",
        )
    out: dict[str, Stone] = {}
    for name, body in stones.items():
        try:
            counter, digest = body["last_counter"], body["last_vc_hash"]
            if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
                raise ValueError("last_counter")
            if not isinstance(digest, str) or len(digest) != 64:
                raise ValueError("last_vc_hash")
            revived = body.get("revived_ts")
            out[str(name)] = Stone(
                Tombstone(str(name), counter, digest),
                None if body.get("decommissioned_since") is None else str(body["decommissioned_since"]),
                float(body["pruned_ts"]),
                str(body.get("source") or ""),
                float(revived) if revived is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{path}: the tombstone of {str(name)[:64]!r} is damaged ({exc})",
                hint=f"restore it from git (git checkout -- {TOMBSTONES_FILE})",
            ) from None
    return out


def save(repo: Path, stones: Mapping[str, Stone]) -> None:
    body = {"schema": SCHEMA, "tombstones": {name: s.to_json() for name, s in sorted(stones.items())}}
    makedirs_durable((repo / TOMBSTONES_FILE).parent)
    atomic_write(repo / TOMBSTONES_FILE, dump_mapping(body))


@dataclass
class GcResult:
    """What one run did: tombstones written, members made to see a final clock, nodes still waiting."""

    pruned: list[dict[str, Any]] = field(default_factory=list)
    merged: list[dict[str, Any]] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the tombstone record cannot be read: nothing is pruned

    @property
    def saved(self) -> bool:
        return bool(self.pruned)

    def lines(self) -> list[str]:
        out = [
            f"vclock: {p['node']}'s entry pruned (tombstone counter {p['last_counter']}, final clock read from "
            f"{p['source']}); members drop it from the next policy push"
            for p in self.pruned
        ]
        out += [f"vclock: {m['member']} has now seen {m['node']}'s final counter {m['counter']}" for m in self.merged]
        out += [f"vclock: {node}'s entry is kept for now: {why}" for node, why in sorted(self.waiting.items())]
        return out + ([f"vclock: nothing pruned: {self.error}"] if self.error else [])

    def as_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "merged": self.merged, "waiting": self.waiting, "error": self.error}


def due(ctx: Context, stones: Mapping[str, Stone]) -> list[str]:
    """The decommissioned nodes past the retention whose entry is not pruned yet."""
    members: dict[str, tuple[str, date | None]] = {}
    for name, m in ctx.config.desired.membership.items():
        since: date | None = None
        if m.since:
            try:
                since = date.fromisoformat(str(m.since)[:10])
            except ValueError:
                since = None  # validate refuses it; an unparseable date prunes nothing
        members[name] = (m.status, since)
    today = datetime.fromtimestamp(ctx.now, tz=UTC).date()
    retention_days = ctx.config.thresholds.vclock_retention / 86400.0
    return [n for n in due_for_pruning(members, today, retention_days) if n not in stones]


def _final_clock(ctx: Context, node: str, members: list[str]) -> tuple[VClock, str] | str:
    """The clock of ``node``'s last WAL record and where it was read; or why it cannot be read."""
    tried: list[str] = []
    if node in {n.name for n in ctx.config.cluster.nodes}:
        try:
            answer = ctx.transport.call(node, {"op": "clock"})
            if isinstance(answer.get("vc"), dict):
                return VClock.from_json(answer["vc"]), node
            tried.append(f"{node} has no WAL record")
        except (HaiosError, ValueError) as exc:
            tried.append(f"{node}: {exc.one_line() if isinstance(exc, HaiosError) else exc}")
    best: tuple[VClock, str] | None = None
    for member in members:
        try:
            answer = ctx.transport.call(member, {"op": "clock", "origin": node})
            vc = VClock.from_json(answer["vc"]) if isinstance(answer.get("vc"), dict) else None
        except (HaiosError, ValueError):
            continue
        if vc is not None and (best is None or vc.counter(node) > best[0].counter(node)):
            best = (vc, f"{member}'s replica")
    if best is not None:
        return best
    return (
        "its final clock cannot be read ("
        + "; ".join(tried or [f"{node} is not in haios.yaml"])
        + ") and no peer holds a replica of its WAL"
    )


def collect(ctx: Context, clock: Callable[[], float], holder: str | None = None) -> GcResult:
    """Prune what can be pruned now (see the module's text); writes the tombstone file when it does."""
    result = GcResult()
    try:
        stones = load(ctx.repo)
    except ConfigError as exc:
        result.error = exc.one_line()
        return result
    pending = due(ctx, stones)
    if not pending:
        return result
    members = [
        n.name
        for n in ctx.config.cluster.nodes
        if (
            ctx.config.desired.membership.get(n.name) is None
            or ctx.config.desired.membership[n.name].status == "active"
        )
    ]
    try:
        lease = ctx.backend.acquire(
            POLICY_SHARD, holder or new_holder(), "vclock-gc", ctx.config.thresholds.lease_ttl, clock()
        )
    except LockHeldError as exc:
        result.waiting.update({node: f"the policy shard is locked ({exc.one_line()})" for node in pending})
        return result
    try:
        for node in pending:
            final = _final_clock(ctx, node, members)
            if isinstance(final, str):
                result.waiting[node] = final
                continue
            vc, source = final
            counter = vc.counter(node)
            unseen: list[str] = []
            for member in members:
                try:
                    answer = ctx.transport.call(
                        member, {"op": "see", "of": node, "vc": vc.to_json(), "token": lease.token}
                    )
                except HaiosError as exc:
                    unseen.append(f"{member} ({exc.one_line()})")
                    continue
                seen = answer.get("counter")
                if answer.get("outcome") == "merged":
                    result.merged.append({"member": member, "node": node, "counter": counter})
                elif isinstance(seen, int) and seen > counter and answer.get("outcome") != "pruned":
                    unseen.append(f"{member} (it has seen counter {seen}, more than the {counter} read from {source})")
            if unseen:
                result.waiting[node] = "not yet seen by every active member: " + ", ".join(unseen)
                continue
            since = ctx.config.desired.membership[node].since
            stones[node] = Stone(tombstone_for(node, vc), since, clock(), source)
            result.pruned.append({"node": node, **stones[node].tombstone.to_json(), "source": source})
    finally:
        ctx.backend.release(lease, clock())
    if result.pruned:
        save(ctx.repo, stones)
    return result


def revive(repo: Path, node: str, now: float) -> None:
    """Mark ``node``'s tombstone matched by a rejoin: its name takes part again, so its entry is no
    longer pruned (the tombstone stays, as the record of what was checked)."""
    stones = load(repo)
    stone = stones.get(node)
    if stone is not None and stone.revived_at is None:
        stones[node] = replace(stone, revived_at=now)
        save(repo, stones)


def check_log(stone: Stone, last_own: Event | None) -> None:
    """FORENSIC_MISMATCH (ForensicMismatch, exit 5) unless ``last_own`` — the last event of the
    tombstoned node in a log that comes back — is exactly the event its tombstone recorded."""
    check_reingest(stone.tombstone, [last_own] if last_own is not None else [])
