"""``haios metrics textfile|push|serve``: the Prometheus metrics of SPEC §9 (``docs/metrics.md``)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry

from ..config import load_repo
from ..errors import MetricsError
from ..fsutil import atomic_write
from ..metrics import delete, exporter, exposition, grouping_key, push, register, write_textfile
from . import _render
from ._options import RepoOpt, resolve

app = typer.Typer(
    help="Prometheus metrics: a textfile for node_exporter, a Pushgateway push, an exporter.", no_args_is_help=True
)
DEFAULT_PORT = 9753

MetricsTextfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--metrics-textfile",
        help="Also write the metrics to this file (atomically), for node_exporter's textfile collector.",
        show_default=False,
    ),
]


PushgatewayOpt = Annotated[
    str | None,
    typer.Option(
        "--pushgateway",
        envvar="HAIOS_PUSHGATEWAY",
        help="Also push the metrics to this Pushgateway (job haios, grouped by cluster and instance).",
        show_default=False,
    ),
]


def registry_for(repo: Path) -> CollectorRegistry:
    """A fresh registry holding the repo's collector (never prometheus_client's global one)."""
    config = load_repo(repo, overrides=False, degraded=True)
    registry = CollectorRegistry(auto_describe=False)
    register(registry, repo, config.cluster.name)
    return registry


def write_if_asked(repo: Path, path: Path | None, gateway: str | None = None) -> None:
    """``--metrics-textfile`` and ``--pushgateway``, after the command's work so they show its outcome.
    A push that fails is reported on stderr and leaves the command's exit code alone: the work is
    done and recorded; the next run pushes again."""
    if path is None and gateway is None:
        return
    registry = registry_for(repo)
    if path is not None:
        write_textfile(registry, path)
    if gateway is not None:
        try:
            push(registry, gateway, load_repo(repo, overrides=False, degraded=True).cluster.name)
        except MetricsError as exc:
            _render.err(f"warning: {exc.one_line()}")


@app.command()
def textfile(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="Where to write (atomically); standard output when left out.", show_default=False),
    ] = None,
    openmetrics: Annotated[
        bool, typer.Option("--openmetrics", help="OpenMetrics format, with the trace ids as exemplars.")
    ] = False,
    repo: RepoOpt = None,
) -> int:
    """The cluster's metrics in Prometheus text format: detection and recovery latencies, recoveries
    by result, partitions, evictions, reconcile runs, budget spent."""
    opts = resolve(ctx, repo=repo)
    registry = registry_for(opts.repo)
    if path is None or str(path) == "-":
        sys.stdout.buffer.write(exposition(registry, openmetrics=openmetrics))
        sys.stdout.flush()
    elif openmetrics:
        atomic_write(path, exposition(registry, openmetrics=True))
    else:
        write_textfile(registry, path)
    return 0


@app.command("push")
def push_cmd(
    ctx: typer.Context,
    gateway: Annotated[
        str,
        typer.Option("--pushgateway", envvar="HAIOS_PUSHGATEWAY", help="The Pushgateway's URL.", show_default=False),
    ],
    instance: Annotated[
        str | None,
        typer.Option("--instance", help="The grouping key's instance (default: this host's name).", show_default=False),
    ] = None,
    remove: Annotated[
        bool, typer.Option("--delete", help="Delete this reconciler's group instead of pushing.")
    ] = False,
    repo: RepoOpt = None,
) -> int:
    """Push the metrics to a Pushgateway (job haios, grouping key cluster and instance), replacing what
    this reconciler pushed before; --delete removes the group. Exit 1 when the gateway refuses."""
    opts = resolve(ctx, repo=repo)
    cluster = load_repo(opts.repo, overrides=False, degraded=True).cluster.name
    key = grouping_key(cluster, instance)
    if remove:
        delete(gateway, cluster, instance=instance)
        _render.out(f"deleted job haios, cluster {key['cluster']}, instance {key['instance']} from {gateway}")
    else:
        push(registry_for(opts.repo), gateway, cluster, instance=instance)
        _render.out(f"pushed to {gateway}: job haios, cluster {key['cluster']}, instance {key['instance']}")
    return 0


@app.command()
def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", help="The port to listen on.", min=0, max=65535)] = DEFAULT_PORT,
    address: Annotated[str, typer.Option("--address", help="The address to listen on.")] = "127.0.0.1",
    repo: RepoOpt = None,
) -> int:
    """An exporter: /metrics serves the cluster's metrics from status/ on every scrape (OpenMetrics
    with exemplars when the scraper asks for it), /healthz says whether the repo is readable. Runs
    until interrupted (SIGTERM or Ctrl-C: exit 0)."""
    import signal

    opts = resolve(ctx, repo=repo)
    server = exporter(opts.repo, registry_for(opts.repo), address, port)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    bound = server.server_address[1]
    _render.info(f"serving http://{address}:{bound}/metrics and /healthz for {opts.repo}")
    try:
        with contextlib.suppress(KeyboardInterrupt):  # SIGTERM or Ctrl-C: a clean stop
            server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
