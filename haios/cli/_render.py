"""Rendering: text to a terminal (rich), JSON for scripts. Commands never print any other way."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from ..untrusted import inert
from ._options import GlobalOptions, Output, current


def console(*, stderr: bool = False, opts: GlobalOptions | None = None) -> Console:
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


def cell(value: object, *, style: str = "") -> Text:
    """A table cell holding ``value`` as plain text: no markup, no line breaks, no escapes."""
    return Text(inert(value, newlines=False), style=style)


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
