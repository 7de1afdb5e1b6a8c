"""``haios init``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..ops.init import init_repo
from . import _render
from ._options import Output, OutputOpt, resolve


def init(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Where to create the repo.", show_default=False)],
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="Cluster name (default: from DIRECTORY's name).", show_default=False)
    ] = None,
    nodes: Annotated[int, typer.Option("--nodes", help="Number of nodes.", min=1)] = 3,
    transport: Annotated[str, typer.Option("--transport", help="How nodes are reached: local or ssh.")] = "local",
    replication: Annotated[
        str | None,
        typer.Option(
            "--replication",
            help="sync-majority (every WAL on a majority of its replica group) or off (one disk per node). "
            "Default: sync-majority from 3 nodes, off below.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty directory (existing node roots are kept).")
    ] = False,
    output: OutputOpt = None,
) -> int:
    """Create a desired-state repo with working defaults, node roots for local nodes, and a first commit."""
    opts = resolve(ctx, output=output)
    result = init_repo(
        directory, cluster=cluster, nodes=nodes, transport=transport, force=force, replication=replication
    )
    if opts.output is not Output.text:
        _render.emit_json(
            {
                "path": str(result.path),
                "cluster": result.cluster,
                "nodes": result.nodes,
                "transport": result.transport,
                "replication": result.replication,
                "commit": result.commit,
                "node_roots_created": result.node_roots_created,
                "node_roots_kept": result.node_roots_kept,
            }
        )
        return 0
    count = len(result.nodes)
    _render.out(
        f"Created {result.path}: cluster {result.cluster}, {count} node{'s' if count != 1 else ''} "
        f"({result.transport} transport, replication {result.replication}), commit {result.commit[:12]}"
    )
    if result.node_roots_kept:
        _render.info(f"kept existing node roots: {', '.join(result.node_roots_kept)}")
    _render.info(f"next: haios --repo {result.path} validate")
    return 0
