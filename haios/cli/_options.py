"""Global options, shared by every command (they may be given before or after the command name)."""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


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

RepoOpt = Annotated[
    Path | None,
    typer.Option("--repo", help="The desired-state repo (default: the current directory).", show_default=False),
]
MaxParallelOpt = Annotated[
    int,
    typer.Option("--max-parallel", help="How many remote nodes are reached at once.", min=1, max=1024),
]
OutputOpt = Annotated[
    Output | None,
    typer.Option("--output", "-o", help="Output format: text, json or ndjson.", show_default=False),
]


def resolve(ctx: typer.Context, *, repo: Path | None = None, output: Output | None = None) -> GlobalOptions:
    """The options in force for a command: its own --repo/--output override the global ones."""
    base = ctx.find_root().obj if isinstance(ctx.find_root().obj, GlobalOptions) else current.get()
    opts = replace(base, repo=repo if repo is not None else base.repo, output=output or base.output)
    current.set(opts)
    return opts


def color_wanted(no_color: bool) -> bool:
    return not no_color and not os.environ.get("NO_COLOR")
