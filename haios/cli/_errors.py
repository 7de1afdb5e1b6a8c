"""The one central error handler: every exception of a command run becomes an exit code here.

``HaiosError`` → its own exit code and a one-line message with its hint; usage errors → exit 1;
Ctrl-C → 130; anything else is a bug: one line naming a log file that holds the traceback
(``--debug`` prints the traceback instead).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import EXIT_ERROR, EXIT_INTERRUPTED, HaiosError
from ..fsutil import atomic_write, makedirs_durable
from ..untrusted import inert
from . import _render
from ._state import Output, current


def log_dir() -> Path:
    """Where crash logs go: $HAIOS_LOG_DIR, else $XDG_STATE_HOME/haios, else ~/.local/state/haios."""
    if os.environ.get("HAIOS_LOG_DIR"):
        return Path(os.environ["HAIOS_LOG_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "haios"


def _write_crash_log(exc: BaseException) -> Path | None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for directory in (log_dir(), Path(os.environ.get("TMPDIR", "/tmp"))):
        path = directory / f"haios-crash-{stamp}-{os.getpid()}.log"
        try:
            makedirs_durable(directory)
            atomic_write(path, f"haios {' '.join(sys.argv[1:])}\n{text}".encode())
            return path
        except HaiosError:
            continue
    return None


def report(
    kind: str, message: str, hint: str, code: int, extra: dict[str, Any] | None = None, command: str = "haios"
) -> int:
    # a hint is runnable as printed: the command the user ran, and the --repo they passed
    hint = _render.runnable(hint).replace("haios COMMAND", command)
    line = f"error: {message}" + (f" (hint: {hint})" if hint else "")
    error = {"error": {"type": kind, "message": message, "hint": hint, "exit_code": code, **(extra or {})}}
    if current.get().output is Output.json:
        _render.emit_json(error)
    elif current.get().output is Output.ndjson:
        _render.emit_ndjson(error)  # one more line of the stream
    _render.err(line)
    return code


def command_path(group: object, argv: Sequence[str]) -> str:
    """``haios node rejoin`` for ``argv`` of ``node rejoin node-3 --repo r``: the subcommands named,
    skipping options and their values (``haios`` when none is)."""
    words = ["haios"]
    current_cmd = group
    for arg in argv:
        if arg == "--":
            break
        commands = getattr(current_cmd, "commands", None)  # a group's subcommands by name
        if arg.startswith("-") or not isinstance(commands, dict):
            continue
        found = commands.get(arg)
        if found is None:
            continue  # an option's value, or an argument
        words.append(arg)
        current_cmd = found
    return " ".join(words)


def handle(exc: BaseException, debug: bool, command: str = "haios") -> int:
    """Turn ``exc`` into output on stderr (and stdout for JSON) and return the exit code."""
    if isinstance(exc, HaiosError):
        if debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        wire = exc.to_wire()  # all of it: a remote caller rebuilds the error from it (errors.from_wire)
        kind, message, hint, code = wire.pop("type"), wire.pop("message"), wire.pop("hint"), wire.pop("exit_code")
        return report(kind, message, hint, code, wire or None, command)
    if isinstance(exc, KeyboardInterrupt):
        return report("Interrupted", "interrupted", "", EXIT_INTERRUPTED)
    import typer  # only here: the per-step fast path reports its errors without the command line

    if isinstance(exc, typer.Abort):
        return report("Aborted", "aborted", "", EXIT_ERROR)
    if isinstance(exc, typer.TyperException):  # click usage errors and the like
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "haios"
        if type(exc).__name__ == "NoArgsIsHelpError":
            # The help page itself is the message (rich help is printed while the error is built).
            if exc.format_message().strip():
                _render.console(stderr=True).print(inert(exc.format_message()), markup=False)
            return EXIT_ERROR
        return report("UsageError", " ".join(exc.format_message().split()), f"see '{where} --help'", EXIT_ERROR)
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return EXIT_ERROR
    log = _write_crash_log(exc)
    where = f"the traceback is in {log}" if log else "run again with --debug for the traceback"
    return report(
        "InternalError", f"internal error: {type(exc).__name__}: {exc}", f"{where}; please report this bug", EXIT_ERROR
    )
