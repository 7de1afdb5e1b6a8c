"""The options in force for a command run, without the command line itself: what rendering and the
error handler read, also on the per-step fast path that never imports typer (:mod:`._steps`)."""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Output(StrEnum):
    text = "text"
    json = "json"
    ndjson = "ndjson"


@dataclass(frozen=True)
class GlobalOptions:
    repo: Path = Path(".")
    output: Output = Output.text
    color: bool = True
    verbosity: int = 0
    debug: bool = False

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0


DEFAULT_OPTIONS = GlobalOptions()
current: contextvars.ContextVar[GlobalOptions] = contextvars.ContextVar(
    "haios_options",
    default=DEFAULT_OPTIONS,  # noqa: B039 - frozen dataclass, never mutated
)


def color_wanted(no_color: bool) -> bool:
    return not no_color and not os.environ.get("NO_COLOR")
