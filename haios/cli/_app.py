"""The ``haios`` command: global options and the command groups.

The commands are imported when they are asked for, not all at start: ``haios node step`` loads
the node's commands, not the reconciler, GitPython, jsonschema or paramiko. ``COMMANDS`` names
each top-level command and group, in the order help lists them, with the module that defines it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.main
from typer._click.exceptions import UsageError
from typer.core import TyperGroup
from typer.models import CommandInfo, TyperInfo

if TYPE_CHECKING:
    from typer._click import Command

from .. import __version__
from ..errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from ._errors import command_path, handle, report
from ._options import GlobalOptions, Output, color_wanted, current

# name -> (module under haios.cli, the command function; None: the module's ``app`` is a group)
COMMANDS: dict[str, tuple[str, str | None]] = {
    "init": ("init", "init"),
    "validate": ("validate", "validate"),
    "plan": ("recover", "plan"),
    "reconcile": ("recover", "reconcile"),
    "doctor": ("doctor", "doctor"),
    "status": ("doctor", "status"),
    "audit": ("recover", "audit"),
    "report": ("report", "report"),
    "agent": ("agent", "agent"),
    "run": ("run", "run"),
    "budget": ("budget", None),
    "metrics": ("metrics", None),
    "node": ("node", None),
    "override": ("override", None),
    "sim": ("sim", None),
    "wal": ("wal", None),
}


class HaiosGroup(TyperGroup):
    """The root command group: runs the command without click's own error handling and maps the result."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
        token = current.set(current.get())
        try:
            rv = super().main(
                args=argv, prog_name=prog_name or "haios", complete_var=complete_var, standalone_mode=False, **extra
            )
            code = rv if isinstance(rv, int) else EXIT_OK
            if code == EXIT_INTERRUPTED:  # Ctrl-C: the command line turned it into exit 130 already
                report("Interrupted", "interrupted", "", EXIT_INTERRUPTED)
        except BaseException as exc:  # noqa: BLE001 - this is the central handler
            if isinstance(exc, SystemExit):
                code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
            else:
                code = handle(exc, debug, command_path(self, argv))
        finally:
            current.reset(token)
        if standalone_mode:
            sys.exit(code)
        return code


class LazyGroup(HaiosGroup):
    """The root group: a command is imported and built the first time it is asked for."""

    def list_commands(self, ctx: typer.Context | None) -> list[str]:  # type: ignore[override]
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context | None, cmd_name: str) -> Command | None:  # type: ignore[override]
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.commands[cmd_name] = _build(cmd_name)
        return super().get_command(ctx, cmd_name)  # type: ignore[arg-type]

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:  # a typo: suggest from every command, not only those built so far
            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if matches and "Did you mean" not in exc.message:
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {', '.join(repr(m) for m in matches)}?"
            raise


def _build(name: str) -> Command:
    """What ``app.command(name=...)`` or ``app.add_typer(module.app, name=...)`` would have made."""
    module_name, function = COMMANDS[name]
    module: Any = importlib.import_module(f"{__package__}.{module_name}")
    if function is None:
        return typer.main.get_group_from_info(
            TyperInfo(module.app, name=name),
            pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=app.rich_markup_mode,
            suggest_commands=app.suggest_commands,
        )
    return typer.main.get_command_from_info(
        CommandInfo(name=name, callback=getattr(module, function)),
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode,
    )


app = typer.Typer(
    name="haios",
    cls=LazyGroup,
    help=(
        "Keep a HAiOS cluster's phase transitions atomic and recoverable: detect half-done "
        "transitions and drive them back to a known-good state, auditable in git."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"haios {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    ctx: typer.Context,
    repo: Annotated[
        Path,
        typer.Option("--repo", help="The desired-state repo (default: the current directory).", show_default=False),
    ] = Path("."),
    output: Annotated[
        Output, typer.Option("--output", "-o", help="Output format: text, json or ndjson.")
    ] = Output.text,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colours (also when NO_COLOR is set).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr (repeatable).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options; they apply to every command."""
    opts = GlobalOptions(
        repo=repo, output=output, color=color_wanted(no_color), verbosity=-1 if quiet else verbose, debug=debug
    )
    ctx.obj = opts
    current.set(opts)
    # library warnings (a torn WAL tail repaired on the way) reach stderr as one 'haios:' line
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="haios: %(message)s")


def main() -> None:
    """Console-script entry point."""
    app()
