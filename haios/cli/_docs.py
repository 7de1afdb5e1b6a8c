"""Generate ``docs/cli.md`` from the commands themselves (``python -m haios.cli._docs``).

A test checks that the committed file equals this output, so the reference never drifts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import typer.main
from typer.core import TyperGroup

from ..errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, EXIT_PENDING, EXIT_VERIFICATION
from ._app import app

EXIT_CODES = [
    (EXIT_OK, "converged / no changes / valid"),
    (EXIT_ERROR, "error: bad input or a failure"),
    (EXIT_PENDING, "changes pending (plan) or findings (doctor)"),
    (EXIT_BLOCKED, "blocked, needs a human (AWAITING_ACK, BLOCKED_COMPENSATOR, HARD_FAILED, minority view)"),
    (EXIT_LOCKED, "lock held by another reconciler, or fenced"),
    (EXIT_VERIFICATION, "verification failed (signatures, integrity, refused repair)"),
    (EXIT_INTERRUPTED, "interrupted"),
]


def walk(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """Every command below ``command``, depth first, with its name path."""
    yield path, command
    if isinstance(command, TyperGroup):
        for name in command.list_commands(None):  # type: ignore[arg-type]
            yield from walk(command.get_command(None, name), (*path, name))  # type: ignore[arg-type]


def _param_rows(command: object) -> list[str]:
    rows = []
    for param in getattr(command, "params", []):
        if param.param_type_name == "argument":
            rows.append(f"| `{param.name.upper()}` | argument | {(param.help or '').strip()} |")
            continue
        names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        default = param.default
        shown = (
            ""
            if default in (None, False, 0, ()) or param.is_flag or not param.show_default
            else f" (default: `{default}`)"
        )
        if hasattr(default, "value"):
            shown = f" (default: `{default.value}`)"
        rows.append(f"| {names} | option | {(param.help or '').strip()}{shown} |")
    return rows


def render() -> str:
    root = typer.main.get_command(app)
    lines = [
        "# haios command line",
        "",
        "Generated from the commands' own help by `make docs`; a test keeps it current.",
        "",
        "Global options go before the command (`haios --repo DIR --output json validate`); `--repo` and",
        "`--output` are also accepted after it.",
        "",
        "## Exit codes",
        "",
        "| code | meaning |",
        "|---|---|",
        *[f"| {code} | {meaning} |" for code, meaning in EXIT_CODES],
        "",
    ]
    for path, command in walk(root):
        title = " ".join(("haios", *path))
        lines.append(f"## `{title}`")
        lines.append("")
        help_text = (getattr(command, "help", None) or "").strip()
        lines.extend([help_text, ""] if help_text else [])
        rows = _param_rows(command)
        if rows:
            lines += ["| name | kind | description |", "|---|---|---|", *rows, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
