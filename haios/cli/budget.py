"""``haios budget ...``: exchange rates for the cost cap."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ..budget import ECB_DAILY_URL, FX_FILE, import_ecb
from ..config import parse_duration
from ..errors import UsageError
from ..gitrepo import commit_paths
from . import _render
from ._options import Output, OutputOpt, RepoOpt, resolve

app = typer.Typer(help="Budgets and exchange rates (the cost circuit breaker).", no_args_is_help=True)


@app.command("fx-import")
def fx_import(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="The ECB's eurofxref-daily.xml (or eurofxref-hist-90d.xml: the newest day is used): a file, or an "
            "http(s) URL to fetch.",
        ),
    ] = ECB_DAILY_URL,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the URL's server (connecting, each read).", min=0.1)
    ] = 30.0,
    max_age: Annotated[
        str | None,
        typer.Option("--max-age", help="Refuse rates older than this (default: fx_max_age of policies/budget.yaml)."),
    ] = None,
    commit: Annotated[
        bool, typer.Option("--commit", help="Commit policies/fx.yaml to the desired-state repo.")
    ] = False,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Read the European Central Bank's daily reference rates into policies/fx.yaml, with their date.

    Without SOURCE, today's file is fetched from the ECB. The rates replace those in the file
    (comments stay); the repo is validated afterwards and the old file restored if a budget or
    playbook uses a currency the new file lacks. Exit 0 on success, 1 on a URL that cannot be fetched
    or a malformed, stale or unusable file (policies/fx.yaml then stays as it was).
    """
    opts = resolve(ctx, repo=repo, output=output)
    try:
        limit = parse_duration(max_age) if max_age is not None else None
    except ValueError as exc:
        raise UsageError(f"--max-age: {exc}") from None
    rates, dropped = import_ecb(opts.repo, source, now=time.time(), max_age=limit, timeout=timeout)
    sha = (
        commit_paths(opts.repo, [FX_FILE], f"haios budget fx-import: ECB reference rates of {rates.day}")
        if commit
        else None
    )
    if opts.output is not Output.text:
        _render.emit_json({"file": FX_FILE, "date": rates.day, "rates": rates.rates, "dropped": dropped, "commit": sha})
        return 0
    _render.out(
        f"{FX_FILE}: {len(rates.rates)} rates of {rates.day} (EUR base)" + (f", committed {sha[:12]}" if sha else "")
    )
    if dropped:
        _render.info(f"no longer quoted, removed: {', '.join(dropped)}")
    return 0
