"""``haios sim trials``: many independent rehearsals, each init → run with faults → reconcile until
it converges or reports blocked → ``sim check`` (SPEC §11).

Trial *i* of ``--seed S`` uses seed ``S + i`` for everything it draws (cluster size, faults, their
points), so a violating trial is reproduced alone with ``--count 1 --seed S+i``. Reconcile runs are
spaced like cron runs, one simulated minute apart (or, when a run reports its next work due later — a
back-off, an open circuit breaker, T_blocked — at that time): the simulator moves the reconciler's
clock instead of sleeping, so Φ timeouts and retry schedules expire at once in wall time. A trace in
BLOCKED_COMPENSATOR is waited out that way until it ends in HARD_FAILED, as cron would.

A trial that ends *blocked* must be blocked for a reason SPEC §4 allows — a corrupt WAL or a
committed-but-unprepared participant (AWAITING_ACK), a partition (BLOCKED), a compensator that
keeps failing (BLOCKED_COMPENSATOR, HARD_FAILED), the minority view — and the checker's findings
that concern exactly what it is blocked on are expected, not violations. Anything else is.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_LOCKED, HaiosError
from ..ops.reconcile import reconcile
from ..procutil import worker_initializer
from ..recovery.machine import State
from .check import Violation, sim_check
from .simulator import FAULT_KINDS, SshLayout, parse_faults, sim_init, sim_run

DEFAULT_FAULTS = "kill=0.3,torn=0.1,bitflip=0.05,partition=0.1,slowfsync=0.2,compfail=0.2,cost=0.1"
MAX_ROUNDS = 24  # reconcile runs per trial (a compensator failing forever needs about 8 to HARD_FAILED)
CRON_INTERVAL = 60.0  # simulated seconds between reconcile runs, unless the last run said work is due later
WAITS_FOR_TIME = frozenset({State.BLOCKED_COMPENSATOR.value, State.HARD_FAILED.value})
ALLOWED_BLOCKS = frozenset(
    {State.AWAITING_ACK.value, State.BLOCKED.value, State.BLOCKED_COMPENSATOR.value, State.HARD_FAILED.value}
)


@dataclass
class Trial:
    seed: int
    nodes: int = 0
    outcome: str = ""  # converged | blocked | error
    rounds: int = 0
    faults: list[str] = field(default_factory=list)
    blocked_on: list[dict[str, Any]] = field(default_factory=list)  # traces that need a human
    violations: list[dict[str, Any]] = field(default_factory=list)
    expected: int = 0  # checker findings explained by an allowed block
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations and self.outcome != "error"

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "nodes": self.nodes,
            "outcome": self.outcome,
            "rounds": self.rounds,
            "faults": self.faults,
            "blocked_on": self.blocked_on,
            "violations": self.violations,
            "expected_findings": self.expected,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


def _explained(v: Violation, blocked: list[dict[str, Any]], corrupt_nodes: set[str]) -> bool:
    """Whether a checker finding is exactly what an allowed block is waiting on."""
    if v.invariant == "control-files" and v.node in corrupt_nodes and v.detail.startswith("WAL "):
        return True  # the corrupt WAL the trace is AWAITING_ACK for
    if v.invariant == "atomicity" and v.node in corrupt_nodes:
        return True  # past the damage its WAL cannot be read: what it did there is unknown, not wrong
    if v.invariant == "atomicity":
        return any((b["g"], b["phase"]) == (v.g, v.phase) for b in blocked)
    if v.invariant == "compensation" and "compensated 0 times" in v.detail:
        # the compensator that keeps failing, or the cost cap, is what the trace is blocked on
        halted = (State.BLOCKED_COMPENSATOR.value, State.AWAITING_ACK.value)
        return any((b["g"], b["phase"]) == (v.g, v.phase) and b["state"] in halted for b in blocked)
    return False


def run_trial(
    workdir: Path,
    seed: int,
    faults: dict[str, float],
    *,
    keep: bool = False,
    ssh: SshLayout | None = None,
    replication: bool = False,
) -> Trial:
    """One trial in ``workdir/trial-<seed>`` (removed afterwards unless ``keep`` or it failed); with
    ``ssh``, haios reaches the trial's nodes through that sshd; with ``replication``, every node's WAL
    is replicated to a majority of its replica group."""
    started = time.monotonic()
    # a rehearsal: the library's warnings (a torn tail repaired on the way) are expected, not news
    logging.getLogger("haios").setLevel(logging.ERROR)
    rng = random.Random(seed)
    trial = Trial(seed, nodes=rng.choice((3, 3, 4, 5)))
    directory = workdir / f"trial-{seed}"
    if directory.exists():
        shutil.rmtree(directory)
    try:
        sim_init(directory, trial.nodes, ssh=ssh, replication=replication)
        report = sim_run(directory, iterations=2, seed=seed, faults=faults)
        trial.faults = sorted({f["fault"] for f in report.faults})
        virtual = time.time()
        corrupt_nodes: set[str] = set()
        for _ in range(MAX_ROUNDS):
            trial.rounds += 1
            result = reconcile(directory, now=virtual)
            code = result.exit_code()
            if code == 0:
                trial.outcome = "converged"
                break
            waiting = [o for o in result.outcomes if o.code == EXIT_BLOCKED]
            if code == EXIT_BLOCKED and not result.plan.minority and all(o.after in WAITS_FOR_TIME for o in waiting):
                # BLOCKED_COMPENSATOR ends by itself (HARD_FAILED after T_blocked): cron goes on
                virtual = max(virtual + CRON_INTERVAL, result.next_due or 0.0)
                continue
            if code == EXIT_BLOCKED:
                trial.outcome = "blocked"
                for o in result.outcomes:
                    if o.code == EXIT_BLOCKED:
                        trial.blocked_on.append({"g": o.g, "phase": o.phase, "state": o.after, "why": o.note})
                if result.plan.minority:
                    trial.blocked_on.append({"g": None, "phase": None, "state": "MINORITY", "why": result.note})
                for t in result.plan.traces:
                    corrupt_nodes.update(t.corrupt)
                break
            if code in (EXIT_ERROR, EXIT_LOCKED):
                trial.outcome = "error"
                trial.error = "; ".join(o.note for o in result.outcomes if o.code in (EXIT_ERROR, EXIT_LOCKED))
                break
            virtual = max(virtual + CRON_INTERVAL, result.next_due or 0.0)  # the next cron run
        else:
            trial.outcome = "error"
            trial.error = f"did not converge in {MAX_ROUNDS} reconcile runs"
        bad_blocks = [b for b in trial.blocked_on if b["state"] not in ALLOWED_BLOCKS and b["state"] != "MINORITY"]
        if bad_blocks:
            trial.error = f"blocked for a reason recovery does not allow (docs/recovery.md): {bad_blocks}"
            trial.outcome = "error"
        for v in sim_check(directory):
            if _explained(v, trial.blocked_on, corrupt_nodes):
                trial.expected += 1
            else:
                trial.violations.append(v.as_dict())
    except HaiosError as exc:
        trial.outcome, trial.error = "error", exc.one_line()
    trial.seconds = time.monotonic() - started
    if trial.ok and not keep:
        shutil.rmtree(directory, ignore_errors=True)
    return trial


@dataclass
class TrialsReport:
    seed: int
    count: int
    faults: str
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failing(self) -> list[Trial]:
        return [t for t in self.trials if not t.ok]

    @property
    def per_minute(self) -> float:
        return 60.0 * len(self.trials) / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        outcomes: dict[str, int] = {}
        drawn: dict[str, int] = {}
        for t in self.trials:
            outcomes[t.outcome] = outcomes.get(t.outcome, 0) + 1
            for kind in t.faults:
                drawn[kind] = drawn.get(kind, 0) + 1
        return {
            "schema": "haios-trials/v1",
            "seed": self.seed,
            "count": self.count,
            "faults": self.faults,
            "outcomes": outcomes,
            "faults_drawn": dict(sorted(drawn.items())),  # how many trials drew each fault kind
            "violating_seeds": [t.seed for t in self.failing],
            "trials_per_minute": round(self.per_minute, 1),
            "seconds": round(self.seconds, 1),
            "failing": [t.as_dict() for t in self.failing],
        }


TrialMap = Callable[[Callable[[int], Trial], list[int]], Iterator[Trial]]


@contextlib.contextmanager
def _runner(jobs: int) -> Iterator[TrialMap]:
    """A map over seeds, in order: in this process, or in ``jobs`` worker processes that ignore
    Ctrl-C, are ended when this process is interrupted and die with it when it is killed."""
    if jobs <= 1:
        yield map
        return
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(jobs, initializer=worker_initializer, initargs=(os.getpid(),))
    try:
        yield pool.imap
    except BaseException:
        pool.terminate()  # the workers' own simulator processes die with them
        raise
    else:
        pool.close()
    finally:
        pool.join()


def run_trials(
    workdir: Path | str,
    *,
    count: int,
    seed: int,
    faults: str = DEFAULT_FAULTS,
    jobs: int | None = None,
    keep: bool = False,
    on_trial: Callable[[Trial], None] | None = None,
    ssh: SshLayout | None = None,
    replication: bool = False,
) -> TrialsReport:
    """Run ``count`` trials with seeds ``seed``..``seed+count-1`` under ``workdir``.

    Interrupted (KeyboardInterrupt, or SIGTERM turned into one by the caller), it ends every worker
    and its simulated nodes before the exception goes on; killed, its workers die with it."""
    parsed = parse_faults(faults)
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    report = TrialsReport(seed, count, faults)
    started = time.monotonic()
    workers = min(count, jobs if jobs is not None else max(1, os.cpu_count() or 1))
    one = functools.partial(run_trial, path, faults=parsed, keep=keep, ssh=ssh, replication=replication)
    with _runner(workers) as each:
        for trial in each(one, list(range(seed, seed + count))):
            report.trials.append(trial)
            if on_trial is not None:
                on_trial(trial)
    report.seconds = time.monotonic() - started
    return report


__all__ = ["DEFAULT_FAULTS", "FAULT_KINDS", "Trial", "TrialsReport", "run_trial", "run_trials"]
