"""``haios wal inspect|verify|repair|tail|import``: read any node's WAL; keep a decommissioned node's archived one."""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import WalCorruptError
from ..ops.archive import import_wal
from ..timefmt import utc
from ..untrusted import is_number
from ..wal import Record, WalReader, repair, verify, wal_dir
from . import _render
from ._options import Output, OutputOpt, RepoOpt, resolve

app = typer.Typer(help="Read, verify and repair a node's write-ahead log.", no_args_is_help=True)

DirArg = Annotated[
    Path,
    typer.Argument(
        help="The WAL directory, or a node root holding wal/.", show_default=False, exists=True, file_okay=False
    ),
]
FromOpt = Annotated[int | None, typer.Option("--from", help="Start at this Lamport index.", min=1, show_default=False)]


def _ts(value: Any) -> str | None:
    if is_number(value):
        return utc(float(value))
    return None


def record_dict(record: Record) -> dict[str, Any]:
    """A record as one JSON object: position and type first, then the payload's fields."""
    payload = record.payload
    return {
        "lamport": record.lamport,
        "type": record.type.name,
        "segment": record.segment,
        "offset": record.offset,
        "ts": _ts(payload.get("ts")),
        **{k: v for k, v in payload.items() if k != "ts"},
    }


def _text_line(record: Record) -> str:
    data = record_dict(record)
    fields = {k: v for k, v in data.items() if k not in ("lamport", "type", "segment", "offset", "ts")}
    body = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return f"{record.lamport:>8} {record.type.name:<16} {record.segment}:{record.offset:<10} {data['ts'] or '-'} {body}"


def _emit(record: Record, output: Output, first: bool) -> None:
    if output is Output.text:
        _render.out(_text_line(record))
    elif output is Output.ndjson:
        _render.emit_ndjson(record_dict(record))
    else:
        sys.stdout.write(("[\n  " if first else ",\n  ") + json.dumps(record_dict(record), ensure_ascii=False))


@app.command()
def inspect(ctx: typer.Context, directory: DirArg, from_lamport: FromOpt = None, output: OutputOpt = None) -> int:
    """Print the WAL's records (ndjson: one object per record with lamport, type, segment, offset, ts and its fields).

    Records are verified as they are read; at the first bad one the command stops with exit 5.
    """
    opts = resolve(ctx, output=output)
    count = 0
    failure: WalCorruptError | None = None
    try:
        for record in WalReader(wal_dir(directory), from_lamport=from_lamport):
            _emit(record, opts.output, count == 0)
            count += 1
    except WalCorruptError as exc:
        if opts.output is not Output.json:
            raise
        failure = exc
    if opts.output is Output.json:
        sys.stdout.write("[]\n" if count == 0 else "\n]\n")
        sys.stdout.flush()
    if failure is not None:  # stdout stays one JSON document: the records before the bad one
        _render.err(f"error: {failure.one_line()}")
        return failure.exit_code
    _render.info(f"{count} record{'s' if count != 1 else ''}")
    return 0


@app.command(name="verify")
def verify_cmd(ctx: typer.Context, directory: DirArg, output: OutputOpt = None) -> int:
    """Check every record; exit 0 when clean, 5 naming the first bad record (torn tail or mid-log corruption)."""
    opts = resolve(ctx, output=output)
    report = verify(directory)
    c = report.corruption
    if opts.output is not Output.text:
        _render.emit_json(
            {
                "directory": str(report.directory),
                "ok": report.ok,
                "segments": report.segments,
                "records": report.records,
                "bytes": report.bytes,
                "first_lamport": report.first_lamport,
                "last_lamport": report.last_lamport,
                "corruption": None
                if c is None
                else {
                    "segment": c.segment,
                    "offset": c.offset,
                    "lamport": c.lamport,
                    "reason": c.reason,
                    "kind": "torn_tail" if c.torn_tail else "mid_log",
                },
            }
        )
    if c is not None:
        error = WalCorruptError(report.directory, c)
        if opts.output is Output.text:
            raise error
        _render.err(f"error: {error.one_line()}")  # the JSON report above is the machine-readable output
        return error.exit_code
    if opts.output is Output.text:
        span = f", lamport {report.first_lamport}..{report.last_lamport}" if report.records else ""
        seg = "segment" if report.segments == 1 else "segments"
        _render.out(f"{report.directory}: ok: {report.records} records in {report.segments} {seg}{span}")
    return 0


@app.command(name="repair")
def repair_cmd(
    ctx: typer.Context,
    directory: DirArg,
    force: Annotated[
        bool, typer.Option("--force", help="Also cut mid-log corruption, keeping the longest valid prefix.")
    ] = False,
    output: OutputOpt = None,
) -> int:
    """Cut a torn tail to the last good record (the cut bytes are kept in <segment>.broken).

    Mid-log corruption is refused with exit 5 and nothing is changed, unless --force.
    """
    opts = resolve(ctx, output=output)
    report = repair(directory, force=force)
    if opts.output is not Output.text:
        c = report.corruption
        _render.emit_json(
            {
                "directory": str(report.directory),
                "action": report.action,
                "segment": c.segment if c else None,
                "offset": c.offset if c else None,
                "kept_records": report.kept_records,
                "dropped_records": report.dropped_records,
                "dropped_bytes": report.dropped_bytes,
                "broken_files": report.broken_files,
            }
        )
    else:
        _render.out(report.summary())
    return 0


@app.command(name="import")
def import_cmd(
    ctx: typer.Context,
    directory: DirArg,
    node: Annotated[str, typer.Option("--node", help="The decommissioned node that wrote it.", show_default=False)],
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Keep an archived WAL of a decommissioned node in the desired-state repo (archive/NODE/wal/, one
    commit), after checking it: it must verify, hold NODE's records only, and — when NODE's clock
    entry was pruned — end exactly where NODE's tombstone says (counter and clock hash).

    Exit 0 imported (or already); 5 it does not verify, holds another node's records, or does not
    match the tombstone (FORENSIC_MISMATCH: the alert is raised and committed, nothing is kept);
    1 NODE is not a decommissioned member, or on error.
    """
    opts = resolve(ctx, repo=repo, output=output)
    result = import_wal(opts.repo, wal_dir(directory), node)
    if opts.output is not Output.text:
        _render.emit_json(result.to_json())
        return 0
    span = f"lamport {result.first_lamport}..{result.last_lamport}"
    done = f"commit {result.commit[:12]}" if result.commit else result.outcome
    _render.out(
        f"{node}: {result.records} records ({span}) kept in {result.path}; tombstone: {result.tombstone} ({done})"
    )
    return 0


@app.command()
def tail(
    ctx: typer.Context,
    directory: DirArg,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Show this many records before following.", min=0)] = 10,
    from_lamport: FromOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep printing records as they are appended.")
    ] = True,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between polls while following.", min=0.01)
    ] = 0.2,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Stop following after this many seconds.", min=0, show_default=False),
    ] = None,
    until: Annotated[
        int | None,
        typer.Option(
            "--until", help="Stop once a record with this Lamport index is printed.", min=1, show_default=False
        ),
    ] = None,
    output: OutputOpt = None,
) -> int:
    """Print the last records and follow the WAL as the writer appends (Ctrl-C to stop)."""
    opts = resolve(ctx, output=output)
    fmt = Output.ndjson if opts.output is Output.json else opts.output
    path = wal_dir(directory)
    reader = WalReader(path, from_lamport=from_lamport, partial_ok=True)
    recent: collections.deque[Record] = collections.deque(maxlen=None if from_lamport else lines)
    recent.extend(reader)
    for record in recent:
        _emit(record, fmt, False)
        if until is not None and record.lamport >= until:
            return 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while follow and (deadline is None or time.monotonic() < deadline):
        time.sleep(interval)
        reader = (
            WalReader(path, cursor=reader.cursor, partial_ok=True)
            if reader.cursor
            else WalReader(path, partial_ok=True)
        )
        for record in reader:
            _emit(record, fmt, False)
            if until is not None and record.lamport >= until:
                return 0
    return 0
