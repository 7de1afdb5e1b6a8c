"""Global options, shared by every command (they may be given before or after the command name)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ._state import DEFAULT_OPTIONS, GlobalOptions, Output, color_wanted, current

__all__ = [
    "DEFAULT_OPTIONS",
    "GlobalOptions",
    "MaxParallelOpt",
    "Output",
    "OutputOpt",
    "RepoOpt",
    "color_wanted",
    "current",
    "resolve",
]


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
