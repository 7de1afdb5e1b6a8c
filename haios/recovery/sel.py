"""The side-effect ledger's memory between cron runs (SPEC §4.4): ``status/sel/`` in the desired-state repo.

A reconciler started by cron forgets everything when it exits, so retry state cannot live in memory.
It lives here, committed with the rest of ``status/`` as part of the audit trail:

``status/sel/keys/<key>.yaml``
    one entry per idempotency key: the compensator and a digest of its parameters (the same key with
    other parameters is refused), every attempt with its wall-clock time and error, when the next
    attempt may start (full-jitter exponential back-off), and — once a run succeeded — the stored
    result, which every later call returns instead of running the compensator again.
``status/sel/breakers.yaml``
    one circuit breaker per compensator: consecutive failures, when it opened, and the run that holds
    its half-open probe.
``status/sel/swings.yaml``
    when each resource was last deleted by a compensation (the create/delete swing limit).

Every change is written atomically and durably *before* the caller acts on it (a success is stored
before the node's COMPENSATED record is written), under an exclusive lock so that reconcilers working
on different shards never lose each other's updates. Times are wall-clock seconds (the caller's
clock, so tests and the simulator can move it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.model import Thresholds
from ..config.yamlload import load_status
from ..controlfile import dump_mapping
from ..errors import ConfigError, ParamsMismatch
from ..fsutil import atomic_write, makedirs_durable
from ..layout import BREAKERS_FILE, SEL_DIR, SEL_KEYS_DIR, SWINGS_FILE
from ..timefmt import utc
from ..untrusted import is_number

KEYS_DIR = SEL_KEYS_DIR
ENTRY_SCHEMA = "haios-sel-entry/v1"
SWING_RETENTION = 7 * 86400.0  # deletes older than this are forgotten (a swing window is shorter)

PENDING, SUCCEEDED, EXHAUSTED, ABANDONED = "pending", "succeeded", "exhausted", "abandoned"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


def params_digest(compensator: str, kind: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"compensator": compensator, "kind": kind, "params": params}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def resource_of(kind: str, params: dict[str, Any]) -> str:
    """What a side effect creates: ``kind:resource`` when the parameters name one, else ``kind:<digest>``."""
    name = params.get("resource")
    if isinstance(name, str) and name:
        return f"{kind}:{name}"
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return f"{kind}:{hashlib.sha256(blob).hexdigest()[:16]}"


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """The upper bound of the wait after failed attempt number ``attempt`` (1-based): base · 2^(attempt−1), capped."""
    return min(cap, base * 2.0 ** max(0, attempt - 1))


def jitter_fraction(key: str, attempt: int) -> float:
    """A uniform draw in [0, 1) fixed by the key and the attempt: reruns of a run wait the same, keys spread."""
    return random.Random(f"{key}\0{attempt}").random()


def full_jitter(key: str, attempt: int, base: float, cap: float) -> float:
    """AWS-style full jitter: uniform in [0, ceiling)."""
    return jitter_fraction(key, attempt) * backoff_ceiling(attempt, base, cap)


def _file_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:80]
    return f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.yaml"


def _breaker_shape(b: Any) -> bool:
    """A breaker as haios writes it: a count, and times (or null)."""
    if not isinstance(b, dict):
        return False
    count = b.get("consecutive_failures") or 0
    opened, probe = b.get("opened_at"), b.get("probe_run")
    return (
        isinstance(count, int)
        and not isinstance(count, bool)
        and (opened is None or is_number(opened))
        and (probe is None or isinstance(probe, str))
    )


def _load(path: Path) -> Any:
    return load_status(path, "a readable side-effect ledger file", "status/sel")


@dataclass
class Entry:
    """One idempotency key's history."""

    key: str
    compensator: str
    kind: str
    digest: str
    resource: str
    node: str = ""
    trace_id: str = ""
    g: int = 0
    phase: str = ""
    state: str = PENDING
    attempts: list[dict[str, Any]] = field(default_factory=list)
    next_attempt_at: float | None = None
    result: Any = None
    succeeded_at: float | None = None
    cost: dict[str, Any] | None = None  # what the compensations cost, {amount, currency}

    @property
    def failures(self) -> int:
        return sum(1 for a in self.attempts if a["outcome"] == "failed")

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": ENTRY_SCHEMA,
            "key": self.key,
            "compensator": self.compensator,
            "kind": self.kind,
            "params_digest": self.digest,
            "resource": self.resource,
            "node": self.node,
            "trace_id": self.trace_id,
            "g": self.g,
            "phase": self.phase,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "next_attempt_utc": utc(self.next_attempt_at) if self.next_attempt_at is not None else None,
            "result": self.result,
            "succeeded_at": self.succeeded_at,
            "cost": self.cost,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        return cls(
            key=d["key"],
            compensator=d["compensator"],
            kind=d.get("kind", ""),
            digest=d["params_digest"],
            resource=d.get("resource", ""),
            node=d.get("node", ""),
            trace_id=d.get("trace_id", ""),
            g=int(d.get("g") or 0),
            phase=d.get("phase", ""),
            state=d.get("state", PENDING),
            attempts=list(d.get("attempts") or []),
            next_attempt_at=d.get("next_attempt_at"),
            result=d.get("result"),
            succeeded_at=d.get("succeeded_at"),
            cost=d.get("cost"),
        )


@dataclass
class Breaker:
    """One compensator's circuit breaker."""

    compensator: str
    consecutive_failures: int = 0
    opened_at: float | None = None
    probe_run: str | None = None  # the run that took the half-open probe

    def state(self, now: float, open_for: float) -> str:
        if self.opened_at is None:
            return CLOSED
        return OPEN if now < self.opened_at + open_for else HALF_OPEN

    def as_dict(self) -> dict[str, Any]:
        return {
            "consecutive_failures": self.consecutive_failures,
            "opened_at": self.opened_at,
            "opened_utc": utc(self.opened_at) if self.opened_at is not None else None,
            "probe_run": self.probe_run,
        }


@dataclass(frozen=True)
class Admission:
    """Whether a compensation may run now, and if not, until when it waits."""

    run: bool
    why: str = ""
    until: float | None = None
    probe: bool = False  # this run is the breaker's half-open probe
    replay: bool = False  # it already succeeded: return the stored result
    exhausted: bool = False  # no attempts left (BLOCKED_COMPENSATOR)


class SelStore:
    """``status/sel/`` of one desired-state repo."""

    def __init__(self, repo: Path, thresholds: Thresholds) -> None:
        self.repo = repo
        self.t = thresholds

    # -- files -----------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        git_dir = self.repo / ".git"
        lock = git_dir / "haios-sel.lock" if git_dir.is_dir() else self.repo / SEL_DIR / ".lock"
        makedirs_durable(lock.parent)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _entry_path(self, key: str) -> Path:
        return self.repo / KEYS_DIR / _file_name(key)

    def entry(self, key: str) -> Entry | None:
        data = _load(self._entry_path(key))
        if data is None:
            return None
        try:
            return Entry.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{self._entry_path(key)}: not a side-effect ledger entry ({exc})",
                hint="restore it from git (git checkout -- status/sel)",
            ) from exc

    def _save(self, entry: Entry) -> None:
        makedirs_durable(self.repo / KEYS_DIR)
        atomic_write(self._entry_path(entry.key), dump_mapping(entry.as_dict()))

    def breakers(self) -> dict[str, Breaker]:
        data = _load(self.repo / BREAKERS_FILE) or {}
        found = data.get("breakers") or {} if isinstance(data, dict) else None
        if not isinstance(found, dict) or not all(_breaker_shape(b) for b in found.values()):
            raise ConfigError(
                f"{self.repo / BREAKERS_FILE}: not a record of circuit breakers",
                hint=f"restore it from git (git checkout -- {BREAKERS_FILE})",
            )
        return {
            str(name): Breaker(
                str(name), int(b.get("consecutive_failures") or 0), b.get("opened_at"), b.get("probe_run")
            )
            for name, b in found.items()
        }

    def _save_breakers(self, breakers: dict[str, Breaker]) -> None:
        body = {"schema": "haios-sel-breakers/v1", "breakers": {n: breakers[n].as_dict() for n in sorted(breakers)}}
        makedirs_durable(self.repo / SEL_DIR)
        atomic_write(self.repo / BREAKERS_FILE, dump_mapping(body))

    def breaker(self, compensator: str) -> Breaker:
        return self.breakers().get(compensator) or Breaker(compensator)

    def swings(self) -> dict[str, list[float]]:
        data = _load(self.repo / SWINGS_FILE) or {}
        found = data.get("deletes") or {} if isinstance(data, dict) else None
        if not isinstance(found, dict) or not all(
            isinstance(times, list) and all(is_number(t) for t in times) for times in found.values()
        ):
            raise ConfigError(
                f"{self.repo / SWINGS_FILE}: not a record of deletions",
                hint=f"restore it from git (git checkout -- {SWINGS_FILE})",
            )
        return {str(r): [float(t) for t in times] for r, times in found.items()}

    # -- the rules -------------------------------------------------------------------------------

    def register(
        self,
        key: str,
        *,
        compensator: str,
        kind: str,
        params: dict[str, Any],
        node: str,
        trace_id: str,
        g: int,
        phase: str,
    ) -> Entry:
        """The key's entry, created on first sight; the same key with other parameters raises."""
        digest = params_digest(compensator, kind, params)
        with self._locked():
            entry = self.entry(key)
            if entry is None:
                entry = Entry(key, compensator, kind, digest, resource_of(kind, params), node, trace_id, g, phase)
                self._save(entry)
                return entry
        if entry.digest != digest:
            raise ParamsMismatch(
                f"idempotency key {key!r} was first used for {entry.compensator} with other parameters "
                f"(trace {entry.trace_id or '-'}); refusing to run it again with different ones"
            )
        return entry

    def admit(self, entry: Entry, now: float, run_id: str) -> Admission:
        """May the key's compensator run now? Takes the half-open probe when it is free."""
        if entry.state == SUCCEEDED:
            return Admission(False, "already succeeded", replay=True)
        if entry.state == ABANDONED:
            return Admission(False, "given up (a HARD_FAILED or aborted trace left it uncompensated)", exhausted=True)
        if entry.state == EXHAUSTED:
            return Admission(False, f"{entry.failures} attempts failed; no attempts left", exhausted=True)
        if entry.attempts and entry.attempts[-1]["outcome"] == "reopened":
            # a signed override granted one more attempt: neither back-off nor an open breaker holds it
            return Admission(True, "one more attempt granted by a signed override")
        if entry.next_attempt_at is not None and now < entry.next_attempt_at:
            return Admission(False, f"back-off: next attempt at {utc(entry.next_attempt_at)}", entry.next_attempt_at)
        with self._locked():
            breakers = self.breakers()
            b = breakers.get(entry.compensator) or Breaker(entry.compensator)
            state = b.state(now, self.t.sel_breaker_open_for)
            if state == OPEN:
                assert b.opened_at is not None
                until = b.opened_at + self.t.sel_breaker_open_for
                return Admission(False, f"circuit breaker of {entry.compensator} open until {utc(until)}", until)
            if state == HALF_OPEN:
                if b.probe_run not in (None, run_id):
                    # another run took the probe and has not reported: the next run may probe again
                    b.probe_run = None
                if b.probe_run == run_id:
                    return Admission(False, f"circuit breaker of {entry.compensator} half-open: one probe per run")
                b.probe_run = run_id
                breakers[entry.compensator] = b
                self._save_breakers(breakers)
                return Admission(True, "half-open probe", probe=True)
        return Admission(True)

    def succeeded(self, entry: Entry, now: float, result: Any, cost: dict[str, Any] | None) -> Entry:
        """Store the success durably (before anyone is told) and close the breaker."""
        with self._locked():
            entry.attempts.append({"at": now, "utc": utc(now), "outcome": "ok"})
            entry.state, entry.result, entry.succeeded_at, entry.next_attempt_at = SUCCEEDED, result, now, None
            entry.cost = _add_cost(entry.cost, cost)
            self._save(entry)
            breakers = self.breakers()
            breakers[entry.compensator] = Breaker(entry.compensator)
            self._save_breakers(breakers)
            swings = self.swings()
            kept = [t for t in swings.get(entry.resource, []) if now - t < SWING_RETENTION] + [now]
            swings[entry.resource] = kept
            body = {"schema": "haios-sel-swings/v1", "deletes": {r: swings[r] for r in sorted(swings) if swings[r]}}
            atomic_write(self.repo / SWINGS_FILE, dump_mapping(body))
        return entry

    def failed(
        self, entry: Entry, now: float, error: str, *, retryable: bool, probe: bool, cost: dict[str, Any] | None
    ) -> Entry:
        """Count a failed attempt: schedule the next one, or mark the key exhausted; feed the breaker."""
        with self._locked():
            attempt = entry.failures + 1
            record: dict[str, Any] = {"at": now, "utc": utc(now), "outcome": "failed", "error": error[-500:]}
            if not retryable:
                record["retryable"] = False
            entry.attempts.append(record)
            entry.cost = _add_cost(entry.cost, cost)
            if not retryable or attempt >= self.t.sel_max_attempts:
                entry.state, entry.next_attempt_at = EXHAUSTED, None
            else:
                wait = full_jitter(entry.key, attempt, self.t.sel_backoff_base, self.t.sel_backoff_cap)
                record["backoff_s"] = round(wait, 3)
                entry.next_attempt_at = now + wait
            self._save(entry)
            if retryable:
                breakers = self.breakers()
                b = breakers.get(entry.compensator) or Breaker(entry.compensator)
                b.consecutive_failures += 1
                b.probe_run = None
                if probe or b.consecutive_failures >= self.t.sel_breaker_failures:
                    b.opened_at = now  # (re)open: a failed half-open probe waits the whole period again
                breakers[entry.compensator] = b
                self._save_breakers(breakers)
        return entry

    def reopen(self, keys: list[str], now: float, by: str, *, abandoned: bool = False) -> list[str]:
        """A signed override grants each exhausted key (with ``abandoned``, each abandoned one too:
        a resume of a HARD_FAILED trace) one more attempt (its next failure exhausts it again);
        returns the keys reopened. ``by``: the override's nonce, for the record."""
        reopened = []
        states = (EXHAUSTED, ABANDONED) if abandoned else (EXHAUSTED,)
        with self._locked():
            for key in keys:
                entry = self.entry(key)
                if entry is not None and entry.state in states:
                    entry.state, entry.next_attempt_at = PENDING, None
                    entry.attempts.append({"at": now, "utc": utc(now), "outcome": "reopened", "override": by})
                    self._save(entry)
                    reopened.append(key)
        return reopened

    def abandon(self, keys: list[str], now: float) -> None:
        """A HARD_FAILED or aborted trace gave up on these keys: they are never run again."""
        with self._locked():
            for key in keys:
                entry = self.entry(key)
                if entry is not None and entry.state != SUCCEEDED:
                    entry.state = ABANDONED
                    entry.attempts.append({"at": now, "utc": utc(now), "outcome": "abandoned"})
                    self._save(entry)

    def deletes_within(self, resource: str, now: float, window: float) -> int:
        return sum(1 for t in self.swings().get(resource, []) if now - t < window)


def _add_cost(total: dict[str, Any] | None, more: dict[str, Any] | None) -> dict[str, Any] | None:
    if not more:
        return total
    if not total:
        return dict(more)
    if total.get("currency") != more.get("currency"):
        raise ConfigError(
            f"a compensator's cost changed currency ({total.get('currency')} then {more.get('currency')})",
            hint="give every playbook cost in one currency",
        )
    return {"amount": float(total["amount"]) + float(more["amount"]), "currency": total["currency"]}
