"""``haios sim init|run|check|trials`` and the fake cloud's ``haios sim cloud delete``."""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..sim.check import sim_check
from ..sim.cloud import FakeCloud
from ..sim.simulator import SshLayout, parse_faults, sim_init, sim_run
from ..sim.trials import DEFAULT_FAULTS, Trial, run_trials
from . import _render
from ._options import Output, OutputOpt, resolve

app = typer.Typer(
    help="Rehearse: a simulated local cluster with real processes and injected faults.", no_args_is_help=True
)
cloud_app = typer.Typer(help="The simulator's fake cloud (what compensating playbooks call).", no_args_is_help=True)
app.add_typer(cloud_app, name="cloud")

DirArg = Annotated[Path, typer.Argument(help="The simulator's directory (a desired-state repo).", show_default=False)]
TransportOpt = Annotated[
    str, typer.Option("--transport", help="local, or ssh: haios reaches the nodes through one sshd on this machine.")
]
SshPortOpt = Annotated[int, typer.Option("--ssh-port", help="The sshd's port (--transport ssh).", min=1, max=65535)]
SshAddressOpt = Annotated[str, typer.Option("--ssh-address", help="The sshd's address (--transport ssh).")]
SshUserOpt = Annotated[str, typer.Option("--ssh-user", help="The user haios logs in as (--transport ssh).")]
SshHostKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--ssh-host-key",
        help="The sshd's host key fingerprint (SHA256:..., as 'ssh-keygen -lf' prints it) to pin; required for ssh.",
        show_default=False,
    ),
]
ReplicationOpt = Annotated[
    bool,
    typer.Option(
        "--replication",
        help="Replicate every node's WAL to a majority of its replica group (replication.mode: sync-majority).",
    ),
]


def _layout(transport: str, address: str, port: int, user: str, host_key: str | None) -> SshLayout | None:
    if transport == "local":
        return None
    if transport != "ssh":
        raise UsageError(f"--transport must be local or ssh (got {transport!r})")
    if host_key is None or not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", host_key):
        raise UsageError(
            "--transport ssh needs --ssh-host-key SHA256:... (the server's key fingerprint, pinned)",
            hint="ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub prints it",
        )
    return SshLayout(address, port, user, host_key)


@app.command()
def init(
    ctx: typer.Context,
    directory: DirArg,
    nodes: Annotated[int, typer.Option("--nodes", help="Number of nodes.", min=1, max=1000)] = 5,
    transport: TransportOpt = "local",
    ssh_port: SshPortOpt = 22,
    ssh_address: SshAddressOpt = "127.0.0.1",
    ssh_user: SshUserOpt = "root",
    ssh_host_key: SshHostKeyOpt = None,
    replication: ReplicationOpt = False,
    output: OutputOpt = None,
) -> int:
    """Create a desired-state repo with N node roots on this machine and a fake cloud.

    With --transport ssh, haios.yaml reaches every node through the sshd at --ssh-address:--ssh-port
    (its host key pinned), so plan, reconcile and doctor go over SSH; the simulator still drives the
    node roots directly, as each node's own scheduler would.
    """
    opts = resolve(ctx, output=output)
    layout = _layout(transport, ssh_address, ssh_port, ssh_user, ssh_host_key)
    path = sim_init(directory, nodes, ssh=layout, replication=replication)
    if opts.output is not Output.text:
        _render.emit_json({"directory": str(path), "nodes": nodes})
    else:
        _render.out(f"Created simulator {path} with {nodes} nodes" + (" behind sshd" if layout else " (local)"))
        _render.info(f"next: haios sim run {path} --iterations 20 --seed 1 --faults none")
    return 0


@app.command()
def run(
    ctx: typer.Context,
    directory: DirArg,
    iterations: Annotated[int, typer.Option("--iterations", help="Iterations to run (5 transitions each).", min=1)] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed, the same run.")] = 0,
    faults: Annotated[
        str,
        typer.Option(
            "--faults",
            help="'none' or name=probability,... of kill, torn, bitflip, partition, slowfsync, compfail, cost.",
        ),
    ] = "none",
    output: OutputOpt = None,
) -> int:
    """Drive real phase transactions through the PhaseDriver, injecting faults; stops at the first half-done transition."""
    opts = resolve(ctx, output=output)
    report = sim_run(directory, iterations=iterations, seed=seed, faults=parse_faults(faults))
    data = {
        "directory": str(report.directory),
        "seed": report.seed,
        "transitions": report.transitions,
        "committed": report.committed,
        "last_committed": {"g": report.last[0], "phase": report.last[1]},
        "stopped_at": None if report.stopped_at is None else {"g": report.stopped_at[0], "phase": report.stopped_at[1]},
        "reason": report.reason,
        "faults": report.faults,
    }
    if opts.output is not Output.text:
        _render.emit_json(data)
    else:
        _render.out(
            f"{report.committed} of {report.transitions} transitions committed; last committed g={report.last[0]} {report.last[1]}"
        )
        for fault in report.faults:
            _render.out(
                "  fault: "
                + " ".join(f"{k}={_render.words(v, k)}" for k, v in fault.items() if k not in ("start", "end"))
            )
        if report.stopped_at is not None:
            _render.out(f"stopped at g={report.stopped_at[0]} {report.stopped_at[1]}: {report.reason}")
            _render.info(f"next: haios --repo {directory} plan   # then: haios --repo {directory} reconcile")
    return 0


@app.command()
def check(ctx: typer.Context, directory: DirArg, output: OutputOpt = None) -> int:
    """Verify the invariants from what is on disk; exit 0 clean, 2 with each violation and its evidence."""
    opts = resolve(ctx, output=output)
    violations = sim_check(directory)
    if opts.output is not Output.text:
        _render.emit_json(
            {"directory": str(directory), "ok": not violations, "violations": [v.as_dict() for v in violations]}
        )
    else:
        for v in violations:
            _render.out(str(v))
        if not violations:
            _render.out(f"{directory}: every invariant holds")
        else:
            _render.info(f"{len(violations)} violation{'s' if len(violations) != 1 else ''}")
    return 2 if violations else 0


@cloud_app.command()
def delete(
    directory: Annotated[Path, typer.Option("--dir", help="The fake cloud's directory.")],
    kind: Annotated[str, typer.Option("--kind", help="fakecloud.vm or fakecloud.dns.")],
    resource: Annotated[str, typer.Option("--resource", help="The resource's id.")],
    key: Annotated[str, typer.Option("--key", help="The side effect's idempotency key.")],
    node: Annotated[str, typer.Option("--node", help="The node the compensation runs for.")] = "",
) -> int:
    """Delete a fake-cloud resource (succeeds for one that never existed)."""
    entry = FakeCloud(directory).delete(kind, resource, key, node)
    _render.emit_ndjson(entry)
    return 0


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM is handled as Ctrl-C is (KeyboardInterrupt), so that cleanup runs; restored afterwards."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def trials(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("--count", help="How many trials.", min=1)] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Trial i uses seed SEED+i.")] = 0,
    faults: Annotated[
        str, typer.Option("--faults", help="As for 'sim run' (default: every fault kind the simulator has).")
    ] = DEFAULT_FAULTS,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", help="Trials run in parallel (default: one per CPU).", min=1, show_default=False),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help="Where trials run (default: a temporary directory); failing trials stay there.",
            show_default=False,
        ),
    ] = None,
    transport: TransportOpt = "local",
    ssh_port: SshPortOpt = 22,
    ssh_address: SshAddressOpt = "127.0.0.1",
    ssh_user: SshUserOpt = "root",
    ssh_host_key: SshHostKeyOpt = None,
    replication: ReplicationOpt = False,
    output: OutputOpt = None,
) -> int:
    """Repeat init → run with faults → reconcile until converged or blocked → check; exit 2 if any trial violates an invariant.

    Ctrl-C or SIGTERM ends every worker and its simulated nodes, then exits 130."""
    opts = resolve(ctx, output=output)
    layout = _layout(transport, ssh_address, ssh_port, ssh_user, ssh_host_key)
    base = workdir or Path(tempfile.mkdtemp(prefix="haios-trials-"))
    show = opts.output is Output.text and not opts.quiet and sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_interrupt_on_sigterm())
        if workdir is None:  # nothing of an interrupted run in a directory nobody named is worth keeping

            def drop(kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
                if kind is not None and issubclass(kind, KeyboardInterrupt):
                    shutil.rmtree(base, ignore_errors=True)
                return False

            stack.push(drop)
        on_trial = None
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bars = stack.enter_context(
                Progress(
                    TextColumn("trials"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=_render.console(stderr=True),
                )
            )
            task = bars.add_task("trials", total=count)

            def on_trial(_: Trial) -> None:
                bars.advance(task)

        report = run_trials(
            base,
            count=count,
            seed=seed,
            faults=faults,
            jobs=jobs,
            on_trial=on_trial,
            ssh=layout,
            replication=replication,
        )
    if workdir is None and not report.failing:
        shutil.rmtree(base, ignore_errors=True)
    data = report.to_json()
    if opts.output is not Output.text:
        _render.emit_json(data)
    else:
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(data["outcomes"].items()))
        _render.out(
            f"{len(report.trials)} trials in {report.seconds:.0f} s ({report.per_minute:.0f} trials/minute): {outcomes}"
        )
        drawn = ", ".join(f"{kind} {n}" for kind, n in data["faults_drawn"].items())
        _render.out(f"faults drawn (trials): {drawn or 'none'}")
        for t in report.failing:
            _render.out(f"seed {t.seed}: {t.outcome} {t.error}".rstrip(), style="red")
            for v in t.violations:
                _render.out(f"    [{v['invariant']}] {v['node'] or ''} g={v['g']} {v['phase'] or ''}: {v['detail']}")
            _render.out(f"    reproduce: haios sim trials --count 1 --seed {t.seed} --faults {faults} --workdir DIR")
        if report.failing:
            _render.out(f"failing trials kept in {base}")
        else:
            _render.out("no trial violated an invariant", style="green")
    return 2 if report.failing else 0
