"""``haios node ...``: the participant commands for shell-based phase executors (each prints JSON)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import replication as _replication  # noqa: F401 - plugs WAL replication into the nodes run here
from ..config import parse_duration
from ..config.model import NAME_RE
from ..errors import HaiosError, UsageError
from ..node import Node
from ..node.root import init_node_root
from ..node.runner import run_phase
from . import _render, _steps
from ._options import Output, OutputOpt, RepoOpt, resolve
from ._serve import handler

if TYPE_CHECKING:
    from ..transport.base import Exchange, Handler

# What a phase's command calls per sub-step (step, side-effect, intent) starts with the node's own
# modules only; the commands that reach other nodes or the repo import those where they run.

app = typer.Typer(
    help="Run a phase transaction on a node, step by step (for shell-based executors).", no_args_is_help=True
)

RootArg = Annotated[Path, typer.Argument(help="The node root.", exists=True, file_okay=False, show_default=False)]
GOpt = Annotated[int, typer.Option("--g", help="The iteration.", min=0, show_default=False)]
PhaseOpt = Annotated[
    str, typer.Option("--phase", help="ANALYZE, BLUEPRINT, CONSTRUCT, VALIDATE or IDLE.", show_default=False)
]


@app.command()
def begin(
    root: RootArg,
    g: GOpt,
    phase: PhaseOpt,
    participants: Annotated[str, typer.Option("--participants", help="Comma-separated node names.")],
    trace_id: Annotated[
        str | None, typer.Option("--trace-id", help="Trace id (default: a new one).", show_default=False)
    ] = None,
) -> int:
    """Enter (g, phase): guards, snapshot of data/, BEGIN_PHASE."""
    names = [p for p in participants.split(",") if p]
    tx = Node(root).begin(g, phase, participants=names, trace_id=trace_id)
    tx.close()
    _render.emit_ndjson(
        {
            "node": tx.node.name,
            "g": g,
            "phase": phase,
            "trace_id": tx.log.trace_id,
            "snapshot": tx.log.snapshot,
            "lamport": tx.log.begin_lamport,
        }
    )
    return 0


@app.command()
def intent(
    root: RootArg,
    g: GOpt,
    phase: PhaseOpt,
    path: Annotated[str, typer.Argument(help="The file, relative to data/.", show_default=False)],
    content_file: Annotated[
        Path | None,
        typer.Option("--content-file", help="Read the new content from this file ('-': stdin).", show_default=False),
    ] = None,
    delete: Annotated[bool, typer.Option("--delete", help="The intent deletes the file.")] = False,
) -> int:
    """Log a change to a data/ file (applied at prepare)."""
    _render.emit_ndjson(_steps.log_intent(root, g, phase, path, content_file=content_file, delete=delete))
    return 0


@app.command(name="side-effect")
def side_effect(
    root: RootArg,
    g: GOpt,
    phase: PhaseOpt,
    key: Annotated[str, typer.Option("--key", help="Idempotency key.")],
    kind: Annotated[
        str | None, typer.Option("--kind", help="Side-effect kind (its compensating playbook).", show_default=False)
    ] = None,
    params: Annotated[str, typer.Option("--params", help="Parameters as a JSON object.")] = _steps.DEFAULT_PARAMS,
    compensator: Annotated[
        str | None, typer.Option("--compensator", help="The playbook that undoes it.", show_default=False)
    ] = None,
    cost: Annotated[
        str, typer.Option("--cost", help='Cost as JSON, e.g. {"amount": 3, "currency": "EUR"}.')
    ] = _steps.DEFAULT_COST,
    done: Annotated[
        str | None,
        typer.Option("--done", help="Log that the call returned, with this JSON result.", show_default=False),
    ] = None,
) -> int:
    """Log an external call before it is made (or, with --done, that it returned)."""
    _render.emit_ndjson(
        _steps.log_side_effect(
            root, g, phase, key, kind=kind, params=params, compensator=compensator, cost=cost, done=done
        )
    )
    return 0


@app.command()
def step(
    root: RootArg,
    g: GOpt,
    phase: PhaseOpt,
    name: Annotated[str, typer.Argument(help="The sub-step's name.", show_default=False)],
    outcome: Annotated[str, typer.Option("--outcome", help="Outcome as JSON.")] = _steps.DEFAULT_OUTCOME,
) -> int:
    """Record a completed sub-step of a long phase (a restarted executor skips it)."""
    _render.emit_ndjson(_steps.log_step(root, g, phase, name, outcome))
    return 0


@app.command()
def prepare(root: RootArg, g: GOpt, phase: PhaseOpt) -> int:
    """Log PREPARE, then apply the logged intents to data/."""
    with Node(root).resume(g, phase) as tx:
        digest = tx.prepare()
        count = len(tx.intents)
    _render.emit_ndjson({"g": g, "phase": phase, "digest": digest, "intents": count})
    return 0


@app.command()
def commit(root: RootArg, g: GOpt, phase: PhaseOpt) -> int:
    """Log COMMIT_PHASE and record (g, phase) as committed in state.txt."""
    tx = Node(root).resume(g, phase)
    tx.commit()
    _render.emit_ndjson({"g": g, "phase": phase, "committed": True})
    return 0


@app.command()
def abort(
    root: RootArg, g: GOpt, phase: PhaseOpt, reason: Annotated[str, typer.Option("--reason", help="Why.")]
) -> int:
    """Restore data/ from the BEGIN snapshot and log ABORT_PHASE."""
    tx = Node(root).resume(g, phase)
    tx.abort(reason)
    _render.emit_ndjson({"g": g, "phase": phase, "aborted": True, "reason": reason})
    return 0


@app.command(name="run")
def run_cmd(
    root: RootArg,
    g: GOpt,
    phase: PhaseOpt,
    command: Annotated[
        list[str], typer.Argument(help="The command, after '--', run in the stage.", show_default=False)
    ],
    participants: Annotated[
        str | None,
        typer.Option("--participants", help="Comma-separated node names (default: this node).", show_default=False),
    ] = None,
    trace_id: Annotated[
        str | None, typer.Option("--trace-id", help="Trace id (default: a new one).", show_default=False)
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option("--timeout", help="Stop the command after this long (e.g. 10m) and abort.", show_default=False),
    ] = None,
    commit: Annotated[bool, typer.Option("--commit", help="Commit at once (a node on its own).")] = False,
    resumable: Annotated[
        bool,
        typer.Option(
            "--resumable",
            help="CMD skips the steps it already logged ($HAIOS_STEPS_DONE): killed mid-way, it is resumed "
            "after its last STEP by recovery instead of rolled back.",
        ),
    ] = False,
) -> int:
    """Run CMD as (g, phase): BEGIN, CMD on a staging copy of data/, then PREPARE (or ABORT).

    CMD runs in $HAIOS_STAGE, a private copy of data/, with HAIOS_ROOT, HAIOS_NODE, HAIOS_G,
    HAIOS_PHASE and HAIOS_TRACE set; its output goes to ROOT/run.log. When it exits 0, every file it
    changed, added or removed becomes an INTENT (its bytes, exactly) and the phase is prepared (with
    --commit, committed); it logs side effects and steps before making them with 'haios node
    side-effect' / 'haios node step'. Any other exit, a timeout or SIGTERM aborts the phase: data/
    is left as it was. HAIOS_STEPS_DONE is the JSON list of the steps already logged ([] on a first
    run) and HAIOS_RESUMED 1 when recovery runs a --resumable CMD again after its last STEP, in the
    stage its killed run left.

    Exit 0 prepared (or committed); 2 the command failed and the phase was aborted; 1 on error.
    """
    names = [p for p in (participants or "").split(",") if p] or None
    limit = parse_duration(timeout) if timeout is not None else None
    done = run_phase(
        root,
        g,
        phase,
        command,
        participants=names,
        trace_id=trace_id,
        timeout=limit,
        commit=commit,
        resumable=resumable,
    )
    _render.emit_ndjson(done.to_json())
    return 0 if done.outcome != "aborted" else 2


@app.command()
def participate(root: RootArg) -> int:
    """Take part in 'haios run' transitions for ROOT: one JSON request per stdin line (prepare: run
    the phase's command up to PREPARE; commit; abort), one answer per stdout line.

    What 'haios run' starts on each member over SSH, one session per run.
    """
    return _serve(root, handler("participate"))


@app.command()
def heartbeat(
    ctx: typer.Context,
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Local nodes to beat for (default: all).", show_default=False)
    ] = None,
    every: Annotated[
        str | None, typer.Option("--every", help="Keep beating at this interval, e.g. 15s.", show_default=False)
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", help="Stop after this many beats.", min=1, show_default=False)
    ] = None,
    repo: RepoOpt = None,
) -> int:
    """Run agent rounds for the local nodes of the repo: a heartbeat each, and gossip (partition status).

    For nodes on other hosts, their own agent beats ('haios agent ROOT' on each).
    """
    from ..config import load_repo
    from ..node.gossip import serve as gossip_serve_one
    from ..node.gossip import view as gossip_view
    from ..ops.agent import SERVE as GOSSIP_SERVE
    from ..ops.agent import Agent
    from ..transport import open_transport

    opts = resolve(ctx, repo=repo)
    config = load_repo(opts.repo)
    roots = {n.name: n.local_root(opts.repo) for n in config.cluster.nodes if n.transport == "local"}
    if not roots:
        raise UsageError(
            f"{opts.repo}: haios.yaml names no local node to beat for",
            hint="on each remote node, run its agent: haios agent ROOT (see examples/deploy/)",
        )
    chosen = nodes or sorted(roots)
    unknown = [n for n in chosen if n not in roots]
    if unknown:
        raise UsageError(f"not local nodes of {opts.repo}: {', '.join(unknown)}")
    interval = parse_duration(every) if every else None
    transport = open_transport(opts.repo, config)  # the peers as the repo reaches them (local or over SSH)

    def connect(peer: str) -> Exchange:
        return transport.exchange(peer, command=GOSSIP_SERVE, handler=gossip_serve_one)

    agents = {name: Agent(roots[name], log=_render.info, clock=time.time, connect=connect) for name in chosen}
    beats = 0
    try:
        while True:
            for name, one in agents.items():
                gossip = one.round()
                seq = gossip_view(roots[name], name)[name]
                _render.emit_ndjson({"node": name, "seq": seq, "partition_status": gossip["partition_status"]})
            beats += 1
            if interval is None or (count is not None and beats >= count):
                return 0
            time.sleep(interval)
    finally:
        for one in agents.values():
            one.shutdown()
        transport.close()


@app.command("gossip-serve")
def gossip_serve(root: RootArg) -> int:
    """Answer peers' gossip for ROOT: one JSON request per stdin line, one answer per stdout line.

    What a peer's agent runs here over SSH, one long-lived session per peer.
    """
    return _serve(root, handler("gossip-serve"))


@app.command()
def recover(
    root: RootArg,
    request: Annotated[
        str | None,
        typer.Option("--request", help="The operation as JSON (default: read it from stdin).", show_default=False),
    ] = None,
) -> int:
    """Run one recovery operation (as JSON: inspect, committed, forward, compensated, rollback, repair, checkpoint,
    catchup).

    This is how reconcile reaches a remote node; every operation that writes checks the fencing
    token first (exit 4 when it is stale).
    """
    text = request if request is not None else typer.get_text_stream("stdin").read()
    parsed = _steps.json_arg(text, "the request")
    if not isinstance(parsed, dict):
        raise UsageError('the request must be a JSON object such as {"op": "inspect", "g": 1, "phase": "ANALYZE"}')
    _render.emit_ndjson(handler("recover")(root, parsed))
    return 0


@app.command()
def rejoin(
    ctx: typer.Context,
    node: Annotated[
        str, typer.Argument(help="The evicted node, or one whose root lost its history.", show_default=False)
    ],
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Bring an evicted node back: roll back what it left half done, catch it up with its peers, and
    end its eviction (one audit commit). A node that was not evicted but whose root holds no record
    of transitions its peers committed with it (deleted and made again, re-provisioned) is caught up
    the same way. With WAL replication on, a node whose WAL is lost or corrupt gets it back from its
    replica peers first (evicted or not). Catching up replays on it what the transitions it missed
    wrote, taken from the first healthy peer (in name order) whose WAL holds a copy that verifies;
    a transition no peer can serve stops the catch-up, names what is missing, and leaves the node
    not caught up.

    Exit 0 rejoined; 2 a rollback on it must wait (a compensator backing off: run it again later);
    3 it needs a human, is still isolated, or no peer holds what it is missing; 5 its WAL is
    corrupt; 1 on error.
    """
    from ..ops.rejoin import rejoin as do_rejoin

    opts = resolve(ctx, repo=repo, output=output)
    result = do_rejoin(opts.repo, node)
    if opts.output is not Output.text:
        _render.emit_json(result.to_json())
        return result.code
    for o in result.rolled_back:
        _render.out(f"g={o.g} {o.phase}: {o.before} -> {o.after} (trace {o.trace_id})")
    if result.rejoined or result.restored:
        what = "rejoined" if result.rejoined else "restored"
        _render.out(f"{node} {what}: {result.note}" + (f" (commit {result.commit[:12]})" if result.commit else ""))
    else:
        _render.out(f"{node} not rejoined yet: {result.note}", style="yellow")
    return result.code


@app.command("replica-serve")
def replica_serve(root: RootArg) -> int:
    """Keep replicas of other nodes' WALs in ROOT/replicas/: answer one JSON request per stdin line.

    This is what an origin node runs on its ssh replica peers (one long-lived session per peer).
    """
    return _serve(root, handler("replica-serve"))


def _serve(root: Path, handle: Handler) -> int:
    from ..transport.base import serve_lines

    def write(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()

    serve_lines(root, handle, sys.stdin, write)
    return 0


@app.command()
def replication(
    ctx: typer.Context,
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Origin nodes to show (default: all of haios.yaml).", show_default=False)
    ] = None,
    permit_async: Annotated[
        str | None,
        typer.Option(
            "--permit-async",
            help="Let this one peer acknowledge before its fsync (for replication.permit_async_for, 30 min by "
            "default; it then clears itself).",
            show_default=False,
        ),
    ] = None,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Show each node's replica group: peers, quorum, LAGGING peers, an ack-only peer, reconfigurations.

    Exit 0; 1 when a node could not be reached (or replication is off in haios.yaml).
    """
    from ..config import load_repo
    from ..transport import open_transport

    opts = resolve(ctx, repo=repo, output=output)
    config = load_repo(opts.repo)
    if config.cluster.replication.mode == "off":
        raise UsageError(f"{opts.repo / 'haios.yaml'}: replication is off", hint="set replication.mode: sync-majority")
    known = [n.name for n in config.cluster.nodes]
    chosen = nodes or known
    unknown = sorted(set(chosen) - set(known)) + ([permit_async] if permit_async and permit_async not in known else [])
    if unknown:
        raise UsageError(f"not nodes of {opts.repo}: {', '.join(unknown)}")
    transport = open_transport(opts.repo, config)
    results: list[dict[str, Any]] = []
    try:
        for name in chosen:
            try:
                answer = transport.call(name, {"op": "replication"})
                if permit_async and permit_async in answer.get("group", [])[1:]:
                    answer = transport.call(name, {"op": "replication", "permit_async": permit_async})
                results.append(answer)
            except HaiosError as exc:
                results.append({"node": name, "error": exc.one_line()})
    finally:
        transport.close()
    if opts.output is not Output.text:
        _render.emit_json({"nodes": results})
    else:
        for r in results:
            if "error" in r:
                _render.out(f"{r['node']}: {r['error']}", style="red")
                continue
            lagging = ", ".join(sorted(r["lagging"])) or "none"
            grant = r.get("permit_async")
            extra = f"; ack-only {grant['peer']} until {time.ctime(grant['until'])}" if grant else ""
            _render.out(
                f"{r['node']}: group {', '.join(r['group'])} (quorum {r['quorum']}); LAGGING {lagging}; "
                f"epoch {r['epoch']}{extra}"
            )
    return 1 if any("error" in r for r in results) else 0


@app.command("init")
def init_root(
    root: Annotated[Path, typer.Argument(help="Where the node root goes (created).", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="The node's name in haios.yaml.", show_default=False)],
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="The compiled policy as JSON (default: read it from stdin).", show_default=False),
    ] = None,
) -> int:
    """Create a node root on this machine (what 'haios node provision' runs on an ssh node).

    An existing root is never touched: prints {"created": false} and exits 0.
    """
    text = policy.read_text(encoding="utf-8") if policy is not None else typer.get_text_stream("stdin").read()
    body = _steps.json_arg(text, "the policy")
    if not isinstance(body, dict) or "cluster" not in body:
        raise UsageError("the policy must be the JSON object 'haios node provision' sends (with a cluster)")
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"node name {name!r} is not allowed (lowercase letters, digits and '-')")
    created = init_node_root(root, name, body)
    _render.emit_ndjson({"node": name, "root": str(root), "created": created})
    return 0


@app.command()
def provision(
    ctx: typer.Context,
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Nodes to provision (default: all of haios.yaml).", show_default=False)
    ] = None,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Create the node roots of the repo's nodes that lack one — local ones here, ssh ones on the node
    through 'haios node init' — with the policy compiled from the desired state. Existing roots are
    left alone. Exit 0 when every node has a root, 1 when one could not be reached or created."""
    from ..audit import desired_commit
    from ..config import load_repo
    from ..transport import open_transport

    opts = resolve(ctx, repo=repo, output=output)
    config = load_repo(opts.repo)
    chosen = nodes or [n.name for n in config.cluster.nodes]
    unknown = sorted(set(chosen) - {n.name for n in config.cluster.nodes})
    if unknown:
        raise UsageError(f"not nodes of {opts.repo}: {', '.join(unknown)}")
    policy = config.compile_policy(desired_commit(opts.repo))
    transport = open_transport(opts.repo, config)
    results: list[dict[str, object]] = []
    try:
        for name in chosen:
            try:
                answer = transport.provision(name, policy)
                results.append({"node": name, "created": bool(answer.get("created"))})
            except HaiosError as exc:
                results.append({"node": name, "error": exc.one_line()})
    finally:
        transport.close()
    if opts.output is not Output.text:
        _render.emit_json({"nodes": results})
    else:
        for r in results:
            if "error" in r:
                _render.out(f"{r['node']}: {r['error']}", style="red")
            else:
                _render.out(f"{r['node']}: {'created' if r['created'] else 'already provisioned'}")
    return 1 if any("error" in r for r in results) else 0
