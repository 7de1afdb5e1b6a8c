"""Trace journals: ``status/recoveries/<trace_id>.yaml`` in the desired-state repo (SPEC §8).

A journal is the human-readable history of one trace: what was decided and why, every fencing token
it held, every step with its node and outcome, alerts raised. It is written atomically after each
step (the nodes' RECOVERY records are written first and are what a resumed run trusts; the journal is
the story told in the audit commit), and only when something in it changed, so a run that changes
nothing leaves every journal byte-identical.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.yamlload import load_status
from ..controlfile import dump_mapping
from ..errors import ConfigError, InputError, InvalidTransition
from ..events import FAILED_PARTIAL
from ..fsutil import atomic_write, makedirs_durable
from ..layout import JOURNAL_DIR
from ..timefmt import utc
from ..untrusted import read_regular
from .machine import NEEDS_A_HUMAN, TERMINAL, WORK, Action, Event, State, step

if TYPE_CHECKING:
    from ..detect.detectors import NodeObservation

JOURNAL_SCHEMA = "haios-trace/v1"


def incident_trace_id(g: int, phase: str, begins: Iterable[tuple[str, int, str]], taken: Iterable[str] = ()) -> str:
    """``<g>-<phase>-<digest>``: sortable by transition, and the same for one incident in ``doctor``,
    ``plan``, ``plan --out``, ``reconcile`` and ``audit``, however often they run. The digest is of
    the participants' BEGIN_PHASE records (``begins``: node, Lamport index, the phase's own trace), so
    the next attempt at (g, phase), which begins anew, is another incident. ``taken``: ids of traces
    that have ended; an incident never reuses one (``-2``, ``-3``, … follow it)."""
    canon = "\n".join([str(g), phase, *sorted(f"{n}:{lamport}:{trace}" for n, lamport, trace in begins)])
    base = f"{g}-{phase.lower()}-{hashlib.sha256(canon.encode()).hexdigest()[:12]}"
    used = set(taken)
    trace_id, n = base, 1
    while trace_id in used:
        n += 1
        trace_id = f"{base}-{n}"
    return trace_id


def begins_of(observations: Mapping[str, NodeObservation], g: int, phase: str) -> list[tuple[str, int, str]]:
    """What identifies an incident at (g, phase): each node's latest BEGIN_PHASE of it."""
    return [
        (name, s.begin_lamport, s.trace_id)
        for name, o in observations.items()
        if (s := o.phases.get((g, phase))) is not None
    ]


def trace_for(repo: Path, g: int, phase: str, observations: Mapping[str, NodeObservation]) -> str:
    """The trace id an incident at (g, phase) has now: the open journal's, else the one the next
    ``plan`` gives it (what ``doctor`` shows, so that an override can be written from it)."""
    history = journals_for(repo, g, phase)
    running = [j for j in history if not j.terminal]
    if running:
        return running[-1].trace_id
    return incident_trace_id(g, phase, begins_of(observations, g, phase), (j.trace_id for j in history))


@dataclass
class Journal:
    trace_id: str
    cluster: str
    g: int
    phase: str
    state: str = State.INTERRUPTED.value
    participants: list[str] = field(default_factory=list)
    decision: str = ""
    reason: str = ""
    opened_at: str = ""
    closed_at: str | None = None
    tokens: list[int] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    compensation: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> attempts, errors
    blocked_since: float | None = None
    resume_attempts: int = 0
    cost: list[dict[str, Any]] = field(default_factory=list)  # per region, as last computed
    overrides: list[dict[str, Any]] = field(default_factory=list)  # signed overrides applied to this trace
    grant: dict[str, Any] | None = None  # the override being carried out: {action, nonce}
    detection: dict[str, Any] | None = None  # {last_activity, detected_at}: time to detect (SPEC §9)
    # the compensations a HARD_FAILED trace gave up on, each as the step that would run it (node,
    # key, compensator, kind, params, from_lamport): what a signed resume gives one more attempt
    abandoned: list[dict[str, Any]] = field(default_factory=list)
    # what the detection made of the transition (SPEC §3: any trip marks it FAILED_PARTIAL)
    transition: str = FAILED_PARTIAL
    # how recovery ended the transition on its participants: outcome, nodes, their merged vector clock, at
    finished: dict[str, Any] | None = None
    dirty: bool = field(default=False, repr=False, compare=False)
    writes: int = field(default=0, repr=False, compare=False)  # saves during this run
    # told of every state change, step and alert as it is recorded (kind, fields): the event stream
    listener: Callable[[str, dict[str, Any]], None] | None = field(default=None, repr=False, compare=False)

    @property
    def shard(self) -> str:
        return self.phase

    @property
    def terminal(self) -> bool:
        return State(self.state) in TERMINAL

    def path(self, repo: Path) -> Path:
        return repo / JOURNAL_DIR / f"{self.trace_id}.yaml"

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": JOURNAL_SCHEMA,
            "trace_id": self.trace_id,
            "cluster": self.cluster,
            "g": self.g,
            "phase": self.phase,
            "shard": self.shard,
            "state": self.state,
            "participants": list(self.participants),
            "decision": self.decision,
            "reason": self.reason,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "fencing_tokens": list(self.tokens),
            "steps": list(self.steps),
            "alerts": list(self.alerts),
            "compensation": dict(self.compensation),
            "blocked_since": self.blocked_since,
            "resume_attempts": self.resume_attempts,
            "cost": list(self.cost),
            "overrides": list(self.overrides),
            "grant": self.grant,
            "detection": self.detection,
            "transition": self.transition,
            **({"abandoned": list(self.abandoned)} if self.abandoned else {}),
            **({"finished": dict(self.finished)} if self.finished else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Journal:
        return cls(
            trace_id=data["trace_id"],
            cluster=data.get("cluster", ""),
            g=int(data["g"]),
            phase=data["phase"],
            state=data.get("state", State.INTERRUPTED.value),
            participants=list(data.get("participants") or []),
            decision=data.get("decision", ""),
            reason=data.get("reason", ""),
            opened_at=data.get("opened_at", ""),
            closed_at=data.get("closed_at"),
            tokens=list(data.get("fencing_tokens") or []),
            steps=list(data.get("steps") or []),
            alerts=list(data.get("alerts") or []),
            compensation=dict(data.get("compensation") or {}),
            blocked_since=data.get("blocked_since"),
            resume_attempts=int(data.get("resume_attempts") or 0),
            cost=list(data.get("cost") or []),
            overrides=list(data.get("overrides") or []),
            grant=data.get("grant"),
            detection=data.get("detection"),
            abandoned=[dict(a) for a in data.get("abandoned") or []],
            transition=str(data.get("transition") or FAILED_PARTIAL),
            finished=dict(data["finished"]) if isinstance(data.get("finished"), dict) else None,
        )

    # -- changes (each marks the journal for saving) ---------------------------------------------

    def set_state(self, state: State, now: float, *, decision: str | None = None, reason: str | None = None) -> None:
        decision = None if decision is None else str(decision)  # a Verdict is kept as its word
        changed = (state.value, decision or self.decision, reason or self.reason) != (
            self.state,
            self.decision,
            self.reason,
        )
        if not changed:
            return
        before = self.state
        self.state = state.value
        if decision is not None:
            self.decision = decision
        if reason is not None:
            self.reason = reason
        if state in TERMINAL:
            self.closed_at = utc(now)
        if state in TERMINAL or state in NEEDS_A_HUMAN:
            self.grant = None  # the override's attempt is over (it ended, or a human is needed again)
        self.dirty = True
        if self.listener is not None:
            self.listener(
                "trace.state", {"from": before, "to": self.state, "decision": self.decision, "why": self.reason}
            )

    def set_cost(self, cost: list[dict[str, Any]]) -> None:
        if cost and cost != self.cost:
            self.cost = list(cost)
            self.dirty = True

    def add_token(self, token: int) -> None:
        if token not in self.tokens:
            self.tokens.append(token)
            self.dirty = True

    def add_step(self, now: float, node: str | None, action: str, outcome: str, **detail: Any) -> None:
        self.steps.append({"at": utc(now), "node": node, "action": action, "outcome": outcome, **detail})
        self.dirty = True
        if self.listener is not None:
            self.listener("recovery.step", {"node": node, "action": action, "outcome": outcome, **detail})

    def alert(self, now: float, name: str, message: str, **detail: Any) -> None:
        self.alerts.append(
            {"at": utc(now), "alert": name, "message": message, **{k: v for k, v in detail.items() if v}}
        )
        self.dirty = True  # (the alert reaches the event stream through status/alerts/, once)

    def save(self, repo: Path) -> None:
        makedirs_durable(repo / JOURNAL_DIR)
        atomic_write(self.path(repo), dump_mapping(self.as_dict()))
        self.dirty = False
        self.writes += 1


def advance(
    j: Journal,
    event: Event,
    clock: Callable[[], float],
    *,
    decision: str | None = None,
    reason: str | None = None,
    alert: tuple[str, str, dict[str, Any]] | None = None,
    once: bool = False,
    work: Mapping[Action, Callable[[], None]] | None = None,
) -> State:
    """Step the state machine from the journal's state with ``event`` and carry out the actions it
    returns, in order: a work action by its handler in ``work`` (one the caller has no handler for is
    a bug), ``ALERT`` by raising ``alert`` (name, message, detail) in the journal (with ``once``: unless it
    carries that alert already), ``WAIT`` and
    ``RELEASE_BARRIER`` by nothing more (the run leaves the trace; a terminal state frees the
    transitions after it). A state that is not terminal is recorded before the work, so that a run
    killed midway finds it and goes on; a terminal one only once its work is done."""
    target, actions = step(State(j.state), event)
    if target not in TERMINAL:
        j.set_state(target, clock(), decision=decision, reason=reason)
    for action in actions:
        if action in WORK:
            handler = (work or {}).get(action)
            if handler is None:
                raise InvalidTransition(f"{event.value} in {j.state} asks for {action.value}, which nobody carries out")
            handler()
    if target in TERMINAL:
        j.set_state(target, clock(), decision=decision, reason=reason)
    if Action.ALERT in actions:
        if alert is None:
            raise InvalidTransition(f"{event.value} raises an alert, but none was given")
        name, message, detail = alert
        if not (once and any(a["alert"] == name for a in j.alerts)):
            j.alert(clock(), name, message, **detail)
    return target


JOURNAL_HINT = "restore it from git (git checkout -- status/recoveries)"
_JOURNAL_NAME = re.compile(r"/([0-9]{1,18})-([a-z]+)-[0-9a-f]+\.yaml$")


def load(path: Path) -> Journal:
    data = load_status(path, "a readable trace journal", "status/recoveries")
    try:
        if data is None:
            raise FileNotFoundError("no such file")
        return Journal.from_dict(data)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not a readable trace journal ({' '.join(str(exc).split())})",
            hint=JOURNAL_HINT,
        ) from exc


def journals_for(repo: Path, g: int, phase: str) -> list[Journal]:
    """Every journal of (g, phase), oldest first."""
    directory = repo / JOURNAL_DIR
    if not directory.is_dir():
        return []
    found = [load(p) for p in sorted(directory.glob(f"{g}-{phase.lower()}-*.yaml"))]
    return sorted(found, key=lambda j: (j.opened_at, j.trace_id))


_TERMINAL_LINE = re.compile(r"^state: (CLEAN_EXIT|HARD_FAILED|ABORTED)$", re.MULTILINE)


_HARD_FAILED_LINE = re.compile(r"^state: HARD_FAILED$", re.MULTILINE)


def hard_failed(repo: Path) -> list[Journal]:
    """The HARD_FAILED traces that abandoned compensations, oldest first (a journal that cannot be
    read is left out here: its own finding says so)."""
    found = _scan(repo, lambda text: bool(_HARD_FAILED_LINE.search(text)), [])
    return sorted(
        (j for j in found if j.state == State.HARD_FAILED.value and j.abandoned),
        key=lambda j: (j.opened_at, j.trace_id),
    )


def open_journals(repo: Path, unreadable: list[ConfigError] | None = None) -> list[Journal]:
    """Journals of traces that have not ended (a cheap text check skips the finished ones). With
    ``unreadable``, a journal that cannot be read is added there (it concerns its own trace only)
    instead of ending the call."""
    return _scan(repo, lambda text: not _TERMINAL_LINE.search(text), unreadable)


def _scan(repo: Path, wanted: Callable[[str], bool], unreadable: list[ConfigError] | None) -> list[Journal]:
    """The journals whose text ``wanted`` picks (a cheap check before the parse)."""
    directory = repo / JOURNAL_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = read_regular(path, "status", within=directory)
            if data is not None and wanted(data.decode("utf-8", "replace")):
                found.append(load(path))
        except (ConfigError, InputError) as exc:
            error = exc if isinstance(exc, ConfigError) else ConfigError(exc.message, hint=JOURNAL_HINT)
            if unreadable is None:
                raise error from exc
            unreadable.append(error)
    return found


def unreadable_shard(error: ConfigError) -> tuple[int, str] | None:
    """The (g, phase) whose journal ``error`` is about, from the file's name (None: not a journal name)."""
    match = _JOURNAL_NAME.search(error.message.split(":", 1)[0])
    return (int(match.group(1)), match.group(2).upper()) if match else None


def find(repo: Path, trace_id: str) -> Journal | None:
    path = repo / JOURNAL_DIR / f"{trace_id}.yaml"
    return load(path) if path.exists() else None
