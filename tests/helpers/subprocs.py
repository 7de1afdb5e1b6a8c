"""The test suite's subprocesses: each in a process group of its own, and none outlives its test.

``run`` is ``subprocess.run`` and ``spawn`` is ``subprocess.Popen``, with three differences:

- the child leads a new session and process group, so killing the group reaches everything it
  started (a CLI's worker pool, a shell's children) — not only the child itself;
- on a timeout, an error or an interrupt (pytest-timeout's signal included) while ``run`` waits,
  the whole group is SIGKILLed before the exception goes on;
- every group is registered: the harness SIGKILLs what is left of a test's groups when the test
  ends (``reap``), and of the session's services when the session ends (``reap(services=True)``).

Where util-linux's ``setpriv`` is installed, the child is also given a parent-death signal, so that
even a test runner that is itself killed leaves nothing behind.

``descendants`` lists every process below a pid, for tests that check that nothing was left over.
The test process makes itself a child subreaper (``become_subreaper``): a process orphaned below it
(a killed CLI's workers) is re-parented to it rather than to init, so that ``leftovers`` still finds
it below the test process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_SETPRIV = shutil.which("setpriv")
_test_groups: list[int] = []
_service_groups: list[int] = []

Command = Sequence[str | os.PathLike[str]]


def _argv(cmd: Command) -> list[str]:
    argv = [os.fspath(c) for c in cmd]
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv] if _SETPRIV else argv


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group (none left: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def spawn(cmd: Command, *, service: bool = False, **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``cmd`` in a process group of its own; killed when the test ends (``service``: when
    the session ends). Keyword arguments are ``subprocess.Popen``'s."""
    kwargs.pop("start_new_session", None)
    proc: subprocess.Popen[Any] = subprocess.Popen(_argv(cmd), start_new_session=True, **kwargs)
    (_service_groups if service else _test_groups).append(proc.pid)
    return proc


def run(
    cmd: Command,
    *,
    check: bool = False,
    timeout: float | None = None,
    input: str | bytes | None = None,  # noqa: A002 - subprocess.run's name
    capture_output: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` with the child's process group killed whenever the wait does not end well."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    proc = spawn(cmd, **kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    kill_group(proc.pid)  # the child is done; whatever it left running in its group is not
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


def reap(*, services: bool = False) -> None:
    """SIGKILL what is left of the groups started since the last reap (the test's, or the session's)."""
    groups = _service_groups if services else _test_groups
    while groups:
        kill_group(groups.pop())


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue  # a zombie is dead; its parent has not waited for it yet
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_descendants(pid: int) -> None:
    """SIGKILL every live process below ``pid`` (a server's sessions), not ``pid`` itself."""
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (sshd forks a process per connection, and that one another)."""
    children = _children()
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def become_subreaper() -> bool:
    """Orphans below this process become its children (Linux's PR_SET_CHILD_SUBREAPER)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reap_zombies() -> None:
    """Wait for this process's dead children that nobody waited for (orphans re-parented to it);
    called when a test has ended, so that no exit status a test still wants is taken."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and fields[1] == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry.name), os.WNOHANG)


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200] or "?"


def _interpreters(pid: int) -> bool:
    """multiprocessing's own helper (the resource tracker) lives as long as this process, by design."""
    return "from multiprocessing.resource_tracker import" in cmdline(pid)


def leftovers(before: set[int], *, settle: float = 5.0) -> list[str]:
    """The processes below this one that were not there at ``before`` and belong to no session
    service, SIGKILLed; each as ``PID COMMAND``. Processes that are on their way out are given up to
    ``settle`` seconds to go first."""
    me = os.getpid()
    deadline = time.monotonic() + settle
    while True:
        services = {p for leader in _service_groups for p in [leader, *descendants(leader)]}
        left = [p for p in descendants(me) if p not in before and p not in services and not _interpreters(p)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    found = [f"{p} {cmdline(p)}" for p in left]
    for p in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    return found
