"""``haios run``: the phase loop on real hosts, driven by the desired state in git (SPEC §2.4).

Each transition ``(g, phase)`` is two-phase commit across the members (:class:`PhaseDriver` with a
:class:`RemoteParticipant` per member: ``haios node participate ROOT`` on the node, over the
transport): every member runs the phase's command from ``desired/state.yaml`` up to PREPARE, then
all commit, or — when one fails to prepare — the prepared ones abort.

Before each transition the desired state is read again, so a ``max_g`` or ``suspend: true``
committed while the run goes on stops it before the next transition that would break it. The run
holds a lease on the ``run`` shard (a second ``haios run`` exits 4) and one on the phase's shard for
the transition (a recovery working on that shard makes the run stop). A member that cannot be
reached, is PARTITIONED or is not where the others are is left out of the transition as long as a
majority of the members takes part; once it is reachable, healthy and behind, it catches up
(``haios node rejoin``'s catch-up) and takes part again. A stop request (SIGTERM) is honoured
between transitions; a run killed mid-transition leaves a transition that ``haios reconcile``
finishes like any other.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import controlfile
from ..cluster.driver import PhaseDriver, TransitionResult
from ..cluster.remote import RemoteParticipant, open_exchange
from ..config import load_repo
from ..config.model import PhasePolicy, RepoConfig
from ..config.model import phase_order as order
from ..controlfile import dump_mapping
from ..coord import Lease, new_holder
from ..errors import (
    EXIT_BLOCKED,
    EXIT_OK,
    EXIT_PENDING,
    BarrierError,
    BarrierMoved,
    BlockedError,
    CommandFailed,
    HaiosError,
    PartitionError,
    TransportError,
    UsageError,
)
from ..fsutil import atomic_write, makedirs_durable
from ..layout import STATUS_DIR
from ..node.heartbeat import gossip_partitioned
from ..node.transaction import next_transition
from ..recovery import membership as members
from ..recovery.nodeops import node_state
from ..transport.base import Exchange
from .context import OpsContext, open_context
from .rejoin import rejoin

RUN_SHARD = "run"
RUN_FILE = f"{STATUS_DIR}/run.yaml"  # what the last 'haios run' did
ATTEMPTS = 3  # tries of one transition, each leaving out the members that could not take part

Position = tuple[int, str | None]


@dataclass
class Step:
    """One transition as the run drove it."""

    g: int
    phase: str
    outcome: str  # committed | aborted | interrupted
    participants: list[str]
    left_out: dict[str, str]
    failed: dict[str, str]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "g": self.g,
            "phase": self.phase,
            "outcome": self.outcome,
            "participants": self.participants,
            "left_out": self.left_out,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class RunReport:
    start: Position
    position: Position
    goal: int | None  # run until (goal, IDLE)
    steps: list[Step] = field(default_factory=list)
    caught_up: list[str] = field(default_factory=list)
    behind: dict[str, str] = field(default_factory=dict)  # members left out at the end, and why
    stopped: str = "done"  # done | max_g | suspended | stop | failed | blocked
    note: str = ""
    code: int = EXIT_OK
    commit: str | None = None

    @property
    def committed(self) -> int:
        return sum(1 for s in self.steps if s.outcome == "committed")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "haios-run/v1",
            "start": {"g": self.start[0], "ph": self.start[1]},
            "position": {"g": self.position[0], "ph": self.position[1]},
            "goal_g": self.goal,
            "committed": self.committed,
            "stopped": self.stopped,
            "note": self.note,
            "caught_up": self.caught_up,
            "left_out": self.behind,
            "steps": [s.to_json() for s in self.steps],
            "commit": self.commit,
            "exit_code": self.code,
        }


Progress = Callable[[Step], None]


def _goal(position: Position, iterations: int | None, until_g: int | None, config: RepoConfig) -> int:
    if iterations is not None and until_g is not None:
        raise UsageError("give --iterations or --until-g, not both")
    if iterations is not None:
        if iterations < 1:
            raise UsageError("--iterations is at least 1")
        return next_transition(*position)[0] + iterations - 1
    if until_g is not None:
        return until_g
    if config.desired.max_g is None:
        raise UsageError(
            "nothing says how far to go: the desired state has no max_g",
            hint="set max_g in desired/state.yaml, or pass --iterations N or --until-g G",
        )
    return config.desired.max_g


def fingerprint(repo: Path) -> list[tuple[str, int, int]]:
    """Name, size and change time of every file the desired state is read from: what tells a
    run that it must read it again."""
    found: list[tuple[str, int, int]] = []
    for top in ("haios.yaml", "desired", "policies", "playbooks"):
        path = repo / top
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for p in paths:
            st = p.stat()
            found.append((str(p), st.st_size, st.st_mtime_ns))
    return found


class _Run:
    def __init__(self, ctx: OpsContext, stop: threading.Event, progress: Progress | None) -> None:
        self.ctx = ctx
        self.stop = stop
        self.progress = progress
        self.holder = new_holder()
        self.exchanges: dict[str, Exchange] = {}
        self.silence = ctx.config.thresholds.heartbeat_window
        self.seen = fingerprint(ctx.repo)
        self.left_out: dict[str, str] = {}  # members that cannot take part now, and why
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="haios-run-survey")
        self._looking: Future[dict[str, dict[str, Any] | str]] | None = None  # a survey of them under way

    # -- the members -------------------------------------------------------------------------------

    def members(self) -> list[str]:
        names = {n.name for n in self.ctx.config.cluster.nodes}
        return [n for n in members.participants(self.ctx.repo, self.ctx.config) if n in names]

    def survey(self, names: list[str]) -> dict[str, dict[str, Any] | str]:
        """Each member's state.txt, or why it cannot take part (unreachable, PARTITIONED, mid-phase)."""

        def one(name: str) -> tuple[str, dict[str, Any] | str]:
            try:
                state = node_state(self.ctx.transport, name)
                raw = self.ctx.transport.read_file(name, "gossip")
            except HaiosError as exc:
                return name, f"unreachable: {exc.message.removeprefix(f'{name}: ')}"
            if state is None:
                return name, "no state.txt: not provisioned"
            if raw is not None:
                try:
                    gossip = controlfile.load_mapping(controlfile.decode(raw, name))
                except HaiosError:
                    gossip = None
                window = self.ctx.config.thresholds.heartbeat_window
                if gossip_partitioned(gossip, time.time(), window):
                    return name, "PARTITIONED"
            if state.get("status") != "READY" or state.get("uncompensated"):
                return name, f"a transition is open (status {state.get('status')})"
            return name, state

        with ThreadPoolExecutor(max_workers=max(1, min(16, len(names)))) as pool:
            return dict(pool.map(one, names))

    def exchange(self, name: str) -> Exchange:
        if name not in self.exchanges:
            self.exchanges[name] = open_exchange(self.ctx.transport, name, self.silence)
        return self.exchanges[name]

    def drop(self, name: str) -> None:
        ex = self.exchanges.pop(name, None)
        if ex is not None:
            ex.close()

    def close(self) -> None:
        for name in list(self.exchanges):
            self.drop(name)

    def shutdown(self) -> None:
        self.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the loop ------------------------------------------------------------------------------------

    def reload(self, report: RunReport) -> bool:
        """Read the desired state again (when a file of it changed); False when it says to stop
        before the next transition."""
        seen = fingerprint(self.ctx.repo)
        config = self.ctx.config
        if seen != self.seen:
            config = load_repo(self.ctx.repo, overrides=False, degraded=True)
            self.seen = seen
        if config.thresholds.heartbeat_window != self.silence:
            self.close()  # the exchanges bear silence by the old window
            self.silence = config.thresholds.heartbeat_window
        self.ctx.config = config
        nxt = next_transition(*report.position)
        if config.desired.suspend:
            report.stopped, report.note = "suspended", "the desired state suspends the cluster (suspend: true)"
            return False
        if config.desired.max_g is not None and nxt[0] > config.desired.max_g:
            report.stopped = "max_g"
            report.note = f"the desired state freezes the cluster at max_g={config.desired.max_g}"
            return False
        return True

    def start(self, report_goal: tuple[int | None, int | None]) -> RunReport:
        all_members = self.members()
        if not all_members:
            raise UsageError("the desired state has no active member to run phases on")
        surveyed = self.survey(all_members)
        ready = {n: s for n, s in surveyed.items() if isinstance(s, dict)}
        opened = {n: s for n, s in surveyed.items() if isinstance(s, str) and s.startswith("a transition is open")}
        if opened:
            name = sorted(opened)[0]
            raise BlockedError(
                f"{name}: {opened[name]}; the cluster is not between transitions",
                hint="run 'haios reconcile' to finish it, then 'haios run' again",
            )
        if not ready:
            raise TransportError("no member can be reached", hint="check the transport ('haios doctor')")
        self.left_out = {n: s for n, s in surveyed.items() if isinstance(s, str)}
        position = max(((int(s.get("g") or 0), s.get("ph")) for s in ready.values()), key=lambda p: order(*p))
        for name, state in ready.items():  # caught up before the first transition (include)
            at = (int(state.get("g") or 0), state.get("ph"))
            if order(*at) < order(*position):
                self.left_out[name] = f"behind: at {_where(at)}"
        goal = _goal(position, *report_goal, self.ctx.config)
        return RunReport(position, position, goal)

    def run(self, report: RunReport) -> RunReport:
        driver = PhaseDriver([], last=report.position)
        run_lease = self.ctx.backend.acquire(
            RUN_SHARD, self.holder, f"run-{uuid.uuid4().hex[:12]}", self.ctx.config.thresholds.lease_ttl, time.time()
        )
        left_out = self.left_out
        try:
            self.include(report, left_out, now=True)  # those behind catch up before the first transition
            while order(*report.position) < order(report.goal or 0, "IDLE"):
                if self.stop.is_set():
                    report.stopped, report.code = "stop", EXIT_PENDING
                    report.note = f"stopped on request after {_where(report.position)}"
                    return report
                if not self.reload(report):
                    return report
                run_lease = self.ctx.backend.renew(run_lease, self.ctx.config.thresholds.lease_ttl, time.time())
                if not self.transition(driver, report, left_out):
                    return report
            report.stopped, report.note = "done", f"reached {_where(report.position)}"
            return report
        finally:
            if left_out:  # the run did not bring every member along: a later run (or reconcile) must
                report.behind = dict(left_out)
                report.note += "; left out: " + "; ".join(f"{n}: {why}" for n, why in sorted(left_out.items()))
                if report.code == EXIT_OK:
                    report.code = EXIT_PENDING
            self.ctx.backend.release(run_lease, time.time())

    def include(self, report: RunReport, left_out: dict[str, str], *, now: bool = False) -> None:
        """Take back the members left out that are healthy again, catching up those behind. They are
        looked at in the background (a member that is down costs a connection timeout, which the
        transitions of the others do not wait for) and taken back at the next call after; ``now``
        looks and takes back at once."""
        if not left_out:
            return
        if self._looking is None:
            if now:
                self._take_back(report, left_out, self.survey(sorted(left_out)))
                return
            self._looking = self._pool.submit(self.survey, sorted(left_out))
        if now:
            wait([self._looking])
        if not self._looking.done():
            return
        surveyed, self._looking = self._looking.result(), None
        self._take_back(report, left_out, surveyed)

    def _take_back(
        self, report: RunReport, left_out: dict[str, str], surveyed: dict[str, dict[str, Any] | str]
    ) -> None:
        for name, state in surveyed.items():
            if name not in left_out:
                continue
            if isinstance(state, str):
                left_out[name] = state
                continue
            at = (int(state.get("g") or 0), state.get("ph"))
            if order(*at) < order(*report.position):
                try:
                    result = rejoin(self.ctx.repo, name)
                except HaiosError as exc:
                    left_out[name] = f"behind, not caught up yet: {exc.one_line()}"
                    continue
                if not result.rejoined:
                    left_out[name] = f"behind, not caught up yet: {result.note}"
                    continue
                report.caught_up.append(name)
                self.drop(name)
            del left_out[name]

    def transition(self, driver: PhaseDriver, report: RunReport, left_out: dict[str, str]) -> bool:
        g, phase = next_transition(*report.position)
        names = self.members()
        for name in list(left_out):
            if name not in names:
                del left_out[name]
        self.include(report, left_out)
        quorum = len(names) // 2 + 1
        lease: Lease | None = None
        try:
            longest = (self.ctx.config.desired.phases.get(phase) or PhasePolicy()).timeout
            ttl = 2 * (longest + self.silence)  # outlives the transition, and a run that died lets go of it
            lease = self.ctx.backend.acquire(phase, self.holder, f"run-{g}-{phase}", ttl, time.time())
            for _ in range(ATTEMPTS):
                taking = self.majority(names, quorum, report, left_out)
                if len(taking) < quorum:
                    report.stopped, report.code = "blocked", EXIT_BLOCKED
                    report.note = (
                        f"(g={g}, {phase}): only {len(taking)} of {len(names)} members can take part, "
                        f"a majority ({quorum}) is needed — "
                        + "; ".join(f"{n}: {why}" for n, why in sorted(left_out.items()))
                    )
                    return False
                try:
                    driver.participants = [
                        RemoteParticipant(n, self.exchange(n), self.ctx.config.desired.phases) for n in taking
                    ]
                except HaiosError as exc:
                    bad = next((n for n in taking if n not in self.exchanges), taking[0])
                    left_out[bad] = f"unreachable: {exc.one_line()}"
                    continue
                result = driver.run(g, phase)
                step = Step(g, phase, result.outcome, taking, dict(left_out), dict(result.failed), result.duration)
                report.steps.append(step)
                if self.progress is not None:
                    self.progress(step)
                if result.outcome == "committed":
                    report.position = (g, phase)
                    if not left_out:
                        self.publish(g, phase)
                    return True
                if result.outcome == "interrupted":
                    report.stopped, report.code = "blocked", EXIT_BLOCKED
                    report.note = (
                        f"(g={g}, {phase}) is committed on {', '.join(result.committed) or 'no member'} but not on "
                        + ", ".join(sorted(result.failed))
                        + ": run 'haios reconcile' to finish it"
                    )
                    return False
                if not self.leave_out(result, left_out, report):
                    return False
            report.stopped, report.code = "blocked", EXIT_BLOCKED
            report.note = f"(g={g}, {phase}) aborted {ATTEMPTS} times: " + "; ".join(
                f"{n}: {why}" for n, why in sorted(report.steps[-1].failed.items())
            )
            return False
        finally:
            if lease is not None:
                self.ctx.backend.release(lease, time.time())

    def majority(self, names: list[str], quorum: int, report: RunReport, left_out: dict[str, str]) -> list[str]:
        """The members that can take part. Fewer than a majority may be a blip (a slow round of the
        agents, a host restarting): the run looks again every heartbeat interval for as long as three
        heartbeat windows, or until it is asked to stop."""
        patience = time.monotonic() + 3 * self.silence
        while True:
            taking = [n for n in names if n not in left_out]
            if len(taking) >= quorum or time.monotonic() >= patience or self.stop.is_set():
                return taking
            self.stop.wait(self.ctx.config.thresholds.heartbeat_interval)
            self.include(report, left_out)

    def leave_out(self, result: TransitionResult, left_out: dict[str, str], report: RunReport) -> bool:
        """Leave out the members whose failure was theirs to be cut off; False when one failed otherwise."""
        for name, error in sorted(result.errors.items()):
            cause = error.__cause__
            if isinstance(error, CommandFailed) or not isinstance(
                cause, TransportError | PartitionError | BarrierError
            ):
                report.stopped, report.code = "failed", EXIT_BLOCKED
                report.note = f"(g={result.g}, {result.phase}) aborted: {error.message}"
                return False
            left_out[name] = (
                "PARTITIONED" if isinstance(cause, PartitionError) else error.message.removeprefix(f"{name}: ")
            )
            self.drop(name)
        return True

    def publish(self, g: int, phase: str) -> None:
        """Move the coordination backend's barrier: every member committed (g, phase)."""
        seen = self.ctx.backend.barrier()
        if order(g, phase) <= order(seen.g, seen.phase):
            return
        with contextlib.suppress(BarrierMoved):  # a reconcile published meanwhile; the next one publishes again
            self.ctx.backend.advance_barrier(seen, g, phase, self.holder, time.time())


def _where(position: Position) -> str:
    return f"g={position[0]} {position[1]}" if position[1] else f"g={position[0]}"


def _record(ctx: OpsContext, report: RunReport) -> str | None:
    path = ctx.repo / RUN_FILE
    makedirs_durable(path.parent)
    body = report.to_json()
    body["steps"] = body["steps"][-20:]  # the last ones; the nodes' WALs have them all
    atomic_write(path, dump_mapping(body))
    start, end = _where(report.start), _where(report.position)
    subject = f"haios run: {report.committed} transitions, {start} -> {end} ({report.stopped})"
    lines = [report.note] if report.note else []
    lines += [f"caught up: {', '.join(report.caught_up)}"] if report.caught_up else []
    lines += [
        f"g={s.g} {s.phase}: {s.outcome} on {', '.join(s.participants)}"
        + (f"; left out {', '.join(sorted(s.left_out))}" if s.left_out else "")
        + (f"; failed {', '.join(sorted(s.failed))}" if s.failed else "")
        for s in report.steps
        if s.outcome != "committed" or s.left_out
    ][-50:]
    return ctx.recorder.commit_run([RUN_FILE], subject, lines, [], uuid.uuid4().hex)


def run(
    repo: Path | str,
    *,
    iterations: int | None = None,
    until_g: int | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    ctx: OpsContext | None = None,
) -> RunReport:
    """Drive the members from where they stand to ``(goal, IDLE)`` (``--iterations``, ``--until-g``
    or the desired ``max_g``), or until ``stop`` is set, the desired state says stop, or a transition
    cannot go on. The report says where it stopped and why (its ``code`` is the exit code)."""
    context = ctx if ctx is not None else open_context(repo)
    runner = _Run(context, stop or threading.Event(), progress)
    try:
        report = runner.start((iterations, until_g))
        try:
            runner.run(report)
        finally:
            runner.shutdown()
            if report.steps or report.caught_up:
                report.commit = _record(context, report)
        asked = iterations is not None or until_g is not None
        if asked and report.stopped in ("max_g", "suspended"):
            report.code = max(report.code, EXIT_PENDING)  # the desired state stopped it short of what was asked
        return report
    finally:
        if ctx is None:
            context.close()
