"""Rendering: text to a terminal (rich), JSON for scripts. Commands never print any other way.

rich is imported when text is first rendered: a command whose output is JSON (a node's sub-step, a
server) does not pay for it."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..timefmt import utc
from ..untrusted import inert
from ._state import GlobalOptions, Output, current

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


def console(*, stderr: bool = False, opts: GlobalOptions | None = None) -> Console:
    from rich.console import Console

    o = opts or current.get()
    return Console(
        file=sys.stderr if stderr else sys.stdout,
        no_color=not o.color,
        highlight=False,
        soft_wrap=True,
        emoji=False,
    )


def out(text: str = "", *, style: str | None = None) -> None:
    """A line of result text on stdout (user data is never parsed as markup, and a control
    character or terminal escape in it is printed as a visible escape)."""
    console().print(inert(text), style=style, markup=False)


def info(text: str, *, style: str | None = None) -> None:
    """A progress or summary line on stderr; suppressed by -q."""
    if not current.get().quiet:
        console(stderr=True).print(inert(text), style=style, markup=False)


def err(text: str) -> None:
    """An error line on stderr."""
    console(stderr=True).print(inert(text), style="red", markup=False)


_EPOCH_MIN = 1e9  # a number of seconds past this, under a key that names a time, is a moment (2001-09-09 on)


def words(value: object, key: str = "") -> str:
    """``value`` as a person reads it: no Python reprs. None is "-", a mapping is "key: value, …",
    a sequence is comma-separated, a boolean yes/no, and a raw epoch under a key naming a time
    (``…_at``, ``since``, ``ts``) an ISO-8601 UTC time."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        timed = key.endswith(("_at", "_ts", "since", "time")) or key in ("ts", "at")
        if timed and value > _EPOCH_MIN:
            return utc(float(value))
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, dict):
        if not value:
            return "-"
        return ", ".join(f"{k}: {_nested(words(v, str(k)))}" for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return ", ".join(_nested(words(v, key)) for v in items) if items else "-"
    return str(value)


def _nested(text: str) -> str:
    return f"({text})" if ", " in text else text


# the commands that act on a desired-state repo: a fix naming one runs where the user's --repo points
_REPO_COMMANDS = re.compile(
    r"\bhaios (?=(?:plan|reconcile|doctor|status|audit|validate|report|budget|override|node|metrics)\b)"
)


def runnable(text: str) -> str:
    """``text`` (a hint, a fix) runnable as printed: every ``haios COMMAND`` it names gets the
    ``--repo DIR`` the user passed (nothing when they did not: the current directory is the repo)."""
    repo = current.get().repo
    if repo == Path("."):
        return text
    return _REPO_COMMANDS.sub(f"haios --repo {shlex.quote(str(repo))} ", text)


def cell(value: object, *, style: str = "") -> Text:
    """A table cell holding ``value`` as plain text: no markup, no line breaks, no escapes."""
    from rich.text import Text

    return Text(inert(words(value), newlines=False), style=style)


def raw(text: str) -> None:
    """Text that is already formatted (Markdown) on stdout, with control characters made visible."""
    sys.stdout.write(inert(text))
    sys.stdout.flush()


def emit_event(event: dict[str, Any]) -> None:
    """One event as one line of JSON on stdout, flushed at once (--output ndjson)."""
    sys.stdout.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def emit_json(value: Any) -> None:
    """One JSON document on stdout: indented for ``--output json``, one line for ``--output ndjson``
    (a command without an event stream is a stream of one object)."""
    if current.get().output is Output.ndjson:
        emit_ndjson(value)
        return
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def emit_ndjson(event: dict[str, Any]) -> None:
    """One event as a line of JSON on stdout."""
    emit_event(event)
