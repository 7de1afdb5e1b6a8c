"""The ``haios`` command: global options and the command groups."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ._errors import HaiosGroup
from ._options import GlobalOptions, Output, color_wanted, current

app = typer.Typer(
    name="haios",
    cls=HaiosGroup,
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


def _register() -> None:
    from . import agent, budget, doctor, init, metrics, node, override, recover, report, run, sim, validate, wal

    app.command(name="init")(init.init)
    app.command(name="validate")(validate.validate)
    app.command(name="plan")(recover.plan)
    app.command(name="reconcile")(recover.reconcile)
    app.command(name="doctor")(doctor.doctor)
    app.command(name="status")(doctor.status)
    app.command(name="audit")(recover.audit)
    app.command(name="report")(report.report)
    app.command(name="agent")(agent.agent)
    app.command(name="run")(run.run)
    app.add_typer(budget.app, name="budget")
    app.add_typer(metrics.app, name="metrics")
    app.add_typer(node.app, name="node")
    app.add_typer(override.app, name="override")
    app.add_typer(sim.app, name="sim")
    app.add_typer(wal.app, name="wal")


_register()


def main() -> None:
    """Console-script entry point."""
    app()
