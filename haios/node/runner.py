"""``haios node run``: an operator's command inside a phase transaction (SPEC §2.4).

::

    BEGIN (snapshot of data/) -> copy data/ to the stage -> CMD in the stage -> PREPARE | ABORT

The command works on a private copy of ``data/`` (``$HAIOS_STAGE``): real copies, not hard links, so a
command that edits a file in place changes neither ``data/`` nor the BEGIN snapshot. When it exits 0,
every file it changed, added or removed becomes an INTENT (its bytes, exactly), then PREPARE applies
them; any other exit, a timeout or a signal aborts the phase (data/ back to the snapshot).

While the command runs the node's WAL is free, so the command logs its side effects and sub-steps
before making them — ``haios node side-effect`` / ``haios node step`` with ``--g "$HAIOS_G" --phase
"$HAIOS_PHASE"``, or from Python :func:`phase_from_env` — and a restarted command sees them.
The command's output goes to ``ROOT/run.log`` (never to this process's stdout, which may be a
coordinator's channel); the last lines of a failed command are in the abort reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from ..errors import BarrierError, HaiosError, StorageError, UsageError
from ..vclock import VClock
from ..wal.phases import COMMAND_STEP, INTERNAL_STEP
from . import manifest
from .transaction import Node, PhaseTx

STAGE_DIR = "stage"
LOG_FILE = "run.log"
LOG_LIMIT = 1 << 20  # run.log is rotated to run.log.1 past this size
TAIL = 600  # characters of a failed command's output quoted in the abort reason
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a command that overran
ENV = ("HAIOS_ROOT", "HAIOS_NODE", "HAIOS_G", "HAIOS_PHASE", "HAIOS_TRACE", "HAIOS_STAGE")


@dataclass
class RunOutcome:
    """What ``run_phase`` did: ``outcome`` is ``prepared``, ``committed`` or ``aborted``."""

    node: str
    g: int
    phase: str
    trace_id: str
    outcome: str
    exit_code: int | None = None
    reason: str = ""
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    digest: str | None = None
    seconds: float = 0.0
    vc: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "g": self.g,
            "phase": self.phase,
            "trace_id": self.trace_id,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "changed": self.changed,
            "removed": self.removed,
            "digest": self.digest,
            "seconds": round(self.seconds, 3),
            "vc": self.vc,
        }


class _Stopped(Exception):
    """SIGTERM or SIGINT reached this process while the command ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into _Stopped while the command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _copy_tree(src: Path, dst: Path) -> None:
    """A real copy of ``src`` (files copied, symlinks kept as links): what the command edits is its own."""
    try:
        shutil.copytree(src, dst, symlinks=True)
    except (OSError, shutil.Error) as exc:
        shutil.rmtree(dst, ignore_errors=True)
        raise StorageError(f"{dst}: could not stage a copy of data/: {exc}") from exc


def _files(top: Path) -> dict[str, os.stat_result]:
    """Every entry under ``top`` that is not a directory, by POSIX relative path."""
    found: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        base = Path(dirpath)
        for name in [*filenames, *(d for d in dirnames if (base / d).is_symlink())]:
            path = base / name
            found[path.relative_to(top).as_posix()] = os.lstat(path)
    return found


def _same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def stage_changes(data: Path, stage: Path) -> tuple[dict[str, bytes], list[str]]:
    """What the command did to the stage: the files it wrote (path -> bytes) and those it removed.

    Raises UsageError for what data/ cannot take: a symlink or a special file the command made."""
    before, after = _files(data), _files(stage)
    written: dict[str, bytes] = {}
    for rel, st in sorted(after.items()):
        old = before.get(rel)
        if stat.S_ISLNK(st.st_mode):
            if old is not None and stat.S_ISLNK(old.st_mode) and os.readlink(stage / rel) == os.readlink(data / rel):
                continue  # a link data/ already had, untouched
            raise UsageError(f"{stage / rel}: the command left a symlink; data/ takes regular files only")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{stage / rel}: the command left a special file; data/ takes regular files only")
        unchanged = old is not None and stat.S_ISREG(old.st_mode) and old.st_size == st.st_size
        if unchanged and _same_bytes(data / rel, stage / rel):
            continue
        written[rel] = (stage / rel).read_bytes()
    removed = sorted(rel for rel in before if rel not in after)
    return written, removed


def _log_to(root: Path) -> Any:
    log = root / LOG_FILE
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_LIMIT:
            os.replace(log, root / f"{LOG_FILE}.1")
    return open(log, "ab")  # noqa: SIM115 - handed to the child, closed by the caller


def _tail(root: Path, start: int) -> str:
    try:
        with open(root / LOG_FILE, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " ".join(text.split())[-TAIL:]


def _run_command(
    command: list[str], *, cwd: Path, env: dict[str, str], log: Any, timeout: float | None, hold: int | None = None
) -> tuple[int | None, str]:
    """Run the command in its own process group; returns (exit code or None, why it did not exit 0).
    ``hold``: a locked descriptor the command inherits, so the lock lasts as long as the command
    does, even when this process is killed."""
    try:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            pass_fds=(hold,) if hold is not None else (),
        )
    except OSError as exc:
        return None, f"could not start {command[0]!r}: {os.strerror(exc.errno or 0) if exc.errno else exc}"

    def stop_group() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_group()
        return None, f"the command ran past its timeout of {timeout:g} s and was stopped"
    except _Stopped:
        stop_group()
        raise
    if code == 0:
        return 0, ""
    if code < 0:
        return code, f"the command was killed by {signal.Signals(-code).name}"
    return code, f"the command exited {code}"


def run_phase(
    root: Path | str,
    g: int,
    phase: str,
    command: list[str],
    *,
    participants: list[str] | None = None,
    trace_id: str | None = None,
    timeout: float | None = None,
    vc: VClock | None = None,
    commit: bool = False,
    env: dict[str, str] | None = None,
    resumable: bool = False,
) -> RunOutcome:
    """Run ``command`` as (g, phase) on the node root: BEGIN, the command on a stage, PREPARE or ABORT.
    An empty ``command`` is a phase with no work (BEGIN, PREPARE).

    ``participants`` default to the node alone; ``vc`` is the coordinator's clock (merged into the
    phase's, with a ``phase_transition.started`` event); ``commit`` commits at once (a node on its
    own). A SIGTERM while the command runs stops it and aborts the phase before it is passed on.
    ``resumable``: the command skips the STEPs it already logged (``$HAIOS_STEPS_DONE``), so a run
    killed mid-way may be resumed (:func:`resume_phase`) instead of rolled back; the command line is
    logged with the phase (a STEP ``haios.command``) for that.
    """
    if command and "/" in command[0] and not os.path.isabs(command[0]):
        command = [os.path.abspath(command[0]), *command[1:]]  # it runs in the stage, not here
    node = Node(Path(root).absolute())  # the command runs elsewhere: every path it is given is absolute
    started = time.monotonic()
    tx = node.begin(g, phase, participants=participants or [node.name], trace_id=trace_id)
    outcome = RunOutcome(node.name, g, phase, tx.log.trace_id, "aborted")
    stage = node.root / STAGE_DIR / f"{g}-{phase}"
    try:
        if vc is not None:
            tx.observe(vc)
            tx.event("phase_transition.started")
        if not command:  # a phase with no work: nothing to stage, nothing changes in data/
            outcome.exit_code, outcome.digest, outcome.outcome = 0, tx.prepare(), "prepared"
            if commit:
                tx.commit()
                outcome.outcome = "committed"
            return outcome
        # not synced on its own: lost in a crash, the phase is only rolled back rather than resumed
        tx.step(COMMAND_STEP, {"argv": command, "timeout": timeout, "resumable": resumable}, durable=False)
        tx.close()  # the WAL is the command's to log side effects and steps in, while it runs
        shutil.rmtree(stage, ignore_errors=True)
        stage.parent.mkdir(exist_ok=True)
        _copy_tree(node.data, stage)
        why = _in_stage(node, tx, command, stage, timeout, env, outcome, steps_done=[])
        tx = node.resume(g, phase)  # with whatever the command logged meanwhile
        if outcome.exit_code == 0 and _prepare_from_stage(node, tx, stage, outcome, commit):
            return outcome
        outcome.reason = why if outcome.exit_code != 0 else outcome.reason
        tx.abort(outcome.reason)
        return outcome
    except _Stopped as stopped:
        _abort_open(node, g, phase, f"haios node run received {stopped}")
        raise HaiosError(f"{node.root}: stopped by {stopped}; (g={g}, {phase}) was aborted") from None
    except HaiosError as exc:
        if not tx.prepared:  # e.g. the stage could not be made: nothing was applied, roll back now
            _abort_open(node, g, phase, exc.one_line())
        raise  # after PREPARE the phase stays open: recovery rolls it forward
    finally:
        tx.close()
        outcome.seconds = time.monotonic() - started
        outcome.vc = tx.vc.to_json()
        _drop_stage(node.root, g, phase)


def _drop_stage(root: Path, g: int, phase: str) -> None:
    """The stage of (g, phase) and its lock, once the phase is prepared or aborted (a killed run
    leaves them, for a resume)."""
    shutil.rmtree(root / STAGE_DIR / f"{g}-{phase}", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(root / STAGE_DIR / f".{g}-{phase}.lock")


def _in_stage(
    node: Node,
    tx: PhaseTx,
    command: list[str],
    stage: Path,
    timeout: float | None,
    env: dict[str, str] | None,
    outcome: RunOutcome,
    *,
    steps_done: list[str],
    resumed: bool = False,
) -> str:
    """Run the command in the stage (its output to run.log); sets ``outcome.exit_code`` and returns
    why it did not exit 0, with the last lines it wrote ("" when it did)."""
    child_env = {
        **os.environ,
        **(env or {}),
        "HAIOS_ROOT": str(node.root),
        "HAIOS_NODE": node.name,
        "HAIOS_G": str(tx.g),
        "HAIOS_PHASE": tx.phase,
        "HAIOS_TRACE": tx.log.trace_id,
        "HAIOS_STAGE": str(stage),
        "HAIOS_STEPS_DONE": json.dumps(steps_done),
        "HAIOS_RESUMED": "1" if resumed else "0",
    }
    log = _log_to(node.root)
    try:
        start = log.tell()
        again = " (resumed after its last STEP)" if resumed else ""
        header = f"--- g={tx.g} {tx.phase} trace {tx.log.trace_id}{again}: {' '.join(command)}\n"
        log.write(header.encode())
        log.flush()
        with _signals_stop(), _stage_lock(node.root, tx.g, tx.phase) as held:
            if held is None:
                raise BarrierError(
                    f"{node.root}: the command of (g={tx.g}, {tx.phase}) is still running on {node.name}",
                    hint="wait until it ends (its stage is locked while it runs)",
                )
            outcome.exit_code, why = _run_command(
                command, cwd=stage, env=child_env, log=log, timeout=timeout, hold=held
            )
    finally:
        log.close()
    if outcome.exit_code == 0:
        return ""
    tail = _tail(node.root, start + len(header))
    return f"{why}: {tail}" if tail else why


@contextlib.contextmanager
def _stage_lock(root: Path, g: int, phase: str) -> Iterator[int | None]:
    """An exclusive lock on (g, phase)'s stage for as long as its command runs (the command inherits
    it: a runner killed while its command goes on leaves the stage locked); None when another
    process holds it."""
    (root / STAGE_DIR).mkdir(exist_ok=True)
    fd = os.open(root / STAGE_DIR / f".{g}-{phase}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def command_running(root: Path, g: int, phase: str) -> bool:
    """Whether the command of (g, phase) — a first run, or a resume — is running on the node now."""
    if not (root / STAGE_DIR / f".{g}-{phase}.lock").exists():
        return False
    with _stage_lock(root, g, phase) as held:
        return held is None


def _prepare_from_stage(node: Node, tx: PhaseTx, stage: Path, outcome: RunOutcome, commit: bool) -> bool:
    """Turn what the command did to the stage into INTENTs and PREPARE (and COMMIT with ``commit``);
    False (``outcome.reason`` says why) when the stage holds what data/ cannot take."""
    try:
        written, removed = stage_changes(node.data, stage)
    except UsageError as exc:
        outcome.reason = exc.message
        return False
    known = manifest.load(node.root)
    for rel, body in written.items():
        tx.intent(rel, body, expected_version=known.version_of(rel))
    for rel in removed:
        tx.intent(rel, None, expected_version=known.version_of(rel))
    outcome.digest = tx.prepare()
    outcome.changed, outcome.removed, outcome.outcome = sorted(written), removed, "prepared"
    if commit:
        tx.commit()
        outcome.outcome = "committed"
    return True


def resume_phase(root: Path | str, g: int, phase: str) -> RunOutcome:
    """Run the command of an open (g, phase) again, after its last STEP, in the stage its killed run
    left (what its finished steps made is there): the command is told which steps are done
    (``$HAIOS_STEPS_DONE``, ``$HAIOS_RESUMED=1``). Exit 0 prepares the phase as a first run would.

    Only a phase whose command declared itself resumable, and whose stage is still there, is run
    again. When it cannot be — no stage, the command fails again, or what it leaves cannot be taken
    — the phase stays open and its ``haios.command`` STEP is logged again, not resumable, with why:
    recovery then rolls it back. ``outcome`` is ``prepared``, ``not resumable``, ``failed``, or
    ``running`` when its command still runs (a runner killed while its command went on, or a resume
    asked for twice): nothing is started then."""
    node = Node(Path(root).absolute())
    log = node.open_phase()
    if log is None or (log.g, log.phase) != (g, phase):
        raise BarrierError(f"{node.root}: (g={g}, {phase}) is not open on {node.name}; nothing to resume")
    outcome = RunOutcome(node.name, g, phase, log.trace_id, "not resumable")
    if log.prepared:
        outcome.outcome, outcome.digest = "prepared", log.prepared
        return outcome
    declared = log.steps.get(COMMAND_STEP)
    argv = declared.get("argv") if isinstance(declared, dict) else None
    if not isinstance(declared, dict) or not declared.get("resumable") or not _is_argv(argv):
        outcome.reason = "its command did not declare itself resumable"
        return outcome
    limit = declared.get("timeout")
    timeout = float(limit) if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0 else None
    stage = node.root / STAGE_DIR / f"{g}-{phase}"
    if command_running(node.root, g, phase):
        outcome.outcome, outcome.reason = "running", "its command is still running (a run or a resume)"
        return outcome
    started = time.monotonic()
    tx = node.resume(g, phase)
    try:
        if not stage.is_dir():
            outcome.reason = f"its stage {stage.name} is gone: the work of the steps it logged is lost"
        else:
            done = [name for name in log.steps if not name.startswith(INTERNAL_STEP)]
            tx.close()
            why = _in_stage(
                node,
                tx,
                argv,
                stage,
                timeout,
                None,
                outcome,
                steps_done=done,
                resumed=True,
            )
            tx = node.resume(g, phase)
            if outcome.exit_code == 0 and _prepare_from_stage(node, tx, stage, outcome, False):
                _drop_stage(node.root, g, phase)
                return outcome
            outcome.outcome, outcome.reason = "failed", why or outcome.reason
        tx.step(COMMAND_STEP, {**declared, "resumable": False, "why": outcome.reason})
        return outcome
    finally:
        tx.close()
        outcome.seconds = time.monotonic() - started
        outcome.vc = tx.vc.to_json()


def _is_argv(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and bool(value) and all(isinstance(w, str) for w in value)


def _abort_open(node: Node, g: int, phase: str, reason: str) -> None:
    """Abort (g, phase) if it is still open; a failure to do so leaves it to recovery."""
    with contextlib.suppress(HaiosError):
        node.resume(g, phase).abort(reason)


def phase_from_env() -> PhaseTx:
    """The phase ``haios node run`` is running this process in, to log side effects and steps::

    with phase_from_env() as tx:
        tx.side_effect("vm-1", "cloud.vm", {...}, "cloud-vm", {"amount": 3, "currency": "EUR"})
    """
    missing = [name for name in ENV if not os.environ.get(name)]
    if missing:
        raise UsageError(f"not run by 'haios node run': {', '.join(missing)} not set")
    return Node(os.environ["HAIOS_ROOT"]).resume(int(os.environ["HAIOS_G"]), os.environ["HAIOS_PHASE"])


def participate(root: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The node's end of a ``haios run`` coordinator (``haios node participate ROOT``), one request
    at a time: ``prepare`` (run the phase's command up to PREPARE), ``commit``, ``abort``.

    Each request stands alone (the open phase is found in the WAL), so a conversation that broke
    can be taken up again, and a commit or abort that already happened answers as done.
    """
    op = request.get("op")
    g, phase = request.get("g"), request.get("phase")
    if type(g) is not int or not isinstance(phase, str):
        raise UsageError("a participant request names its g (an integer) and phase")
    vc = VClock.from_json(request.get("vc") or {})
    node = Node(root)
    if op == "prepare":
        command, timeout = request.get("command"), request.get("timeout")
        participants, trace_id = request.get("participants"), request.get("trace_id")
        if not isinstance(command, list) or not all(isinstance(w, str) for w in command):
            raise UsageError("prepare: 'command' is a list of strings")
        if not isinstance(participants, list) or not all(isinstance(p, str) for p in participants):
            raise UsageError("prepare: 'participants' is a list of node names")
        if timeout is not None and not isinstance(timeout, int | float):
            raise UsageError("prepare: 'timeout' is a number of seconds")
        resumable = request.get("resumable", False)
        if not isinstance(resumable, bool):
            raise UsageError("prepare: 'resumable' is true or false")
        done = run_phase(
            root,
            g,
            phase,
            command,
            participants=participants,
            trace_id=str(trace_id or "") or None,
            timeout=timeout,
            vc=vc,
            resumable=resumable,
        )
        return done.to_json()
    if op not in ("commit", "abort"):
        raise UsageError(f"unknown participant request {op!r} (prepare, commit or abort)")
    log = node.open_phase()
    if log is None or (log.g, log.phase) != (g, phase):
        state, _ = node.state()
        if (state["g"], state["ph"]) == (g, phase):  # it committed (an abort then changes nothing)
            return {"node": node.name, "g": g, "phase": phase, "outcome": "committed", "vc": {}}
        if op == "abort":
            return {"node": node.name, "g": g, "phase": phase, "outcome": "aborted", "vc": {}}
        raise BarrierError(f"{root}: (g={g}, {phase}) is not open on {node.name}; nothing to {op}")
    with node.resume(g, phase) as tx:
        tx.observe(vc)
        if op == "commit":
            tx.event("phase_transition.finished")
            tx.commit()
        else:
            tx.abort(str(request.get("reason") or "the coordinator aborted the transition"))
        return {
            "node": node.name,
            "g": g,
            "phase": phase,
            "outcome": "committed" if op == "commit" else "aborted",
            "vc": tx.vc.to_json(),
        }
