"""``haios plan``, ``haios reconcile`` and ``haios audit``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import audit as audit_lib
from ..config.validate import require_repo
from ..coord import holder_words
from ..errors import HaiosError, UsageError
from ..fsutil import atomic_write
from ..ops.context import close_transport
from ..ops.plan import build, plan_events, settled_line
from ..ops.reconcile import reconcile as run_reconcile
from ..recovery.journal import find as find_journal
from ..recovery.model import Plan, RunResult
from ..recovery.trace import Progress
from ..timefmt import utc
from ..transport import DEFAULT_PARALLEL
from ..untrusted import read_json
from . import _render
from ._options import GlobalOptions, MaxParallelOpt, Output, OutputOpt, RepoOpt, resolve
from .metrics import MetricsTextfileOpt, PushgatewayOpt, write_if_asked

_CODES = {0: "nothing to do", 2: "changes pending", 3: "blocked: needs a human", 4: "locked by another reconciler"}


def render_markdown(plan: Plan) -> str:
    """The plan as a pull-request comment."""
    code = plan.exit_code()
    head = {0: "nothing to do", 2: "changes pending", 3: "blocked: needs a human", 4: "locked by another reconciler"}
    lines = [
        f"### haios plan for `{plan.cluster}` — {head.get(code, str(code))}",
        "",
        f"Desired state `{(plan.desired_commit or 'uncommitted')[:12]}`, observed `{plan.observed_hash[:19]}`, "
        f"{len(plan.reachable)} of {len(plan.active)} active members reachable"
        + (" — **minority view: nothing will change**" if plan.minority else "")
        + (" — **suspended: plan only**" if plan.suspended else ""),
        "",
    ]
    if plan.uncommitted:
        lines += [
            f"**Uncommitted edits** to {', '.join(f'`{f}`' for f in plan.uncommitted)}: this plan reads them as "
            "they are; reconcile refuses them unless `--allow-dirty`",
            "",
        ]
    for problem in plan.unreadable.values():
        lines += [f"**Cannot use** {problem}: the transitions that need it wait", ""]
    m = plan.membership
    for label, key in (("Evicted", "evicted"), ("Pending eviction", "pending_eviction")):
        if m.get(key):
            lines += [f"{label}: {', '.join(f'`{n}`' for n in m[key])}", ""]
    if m.get("eviction_blocked"):
        lines += [
            f"**Eviction refused (no healthy majority would remain): {', '.join(m['eviction_blocked'])} — page a human**",
            "",
        ]
    shown = [o for o in plan.overrides if o.get("effect") != "applied"]
    if shown:
        lines += ["| override | action | trace | signatures | effect |", "|---|---|---|---|---|"]
        for o in shown:
            why = f": {o['why']}".replace("|", "\\|") if o.get("why") else ""
            lines.append(
                f"| `{o['file']}` | {o.get('action') or '-'} | `{o.get('trace_id') or '-'}` | "
                f"{o.get('have', 0)} of {o.get('need', 1)} | **{o['effect']}**{why} |"
            )
        lines.append("")
    for a in plan.abandoned:
        what = ", ".join(f"`{x['key']}` on `{x['node']}`" for x in a["abandoned"])
        lines += [
            f"**HARD_FAILED** `{a['trace_id']}` (g={a['g']} {a['phase']}) left uncompensated: {what}; "
            f"a signed resume retries them: `{a['retry'].split('   #')[0]}`",
            "",
        ]
    for lost in plan.unreached.values():
        lines += [f"**Not reached:** {lost['error']}" + (f" — {lost['hint']}" if lost["hint"] else ""), ""]
    if plan.policy:
        nodes = ", ".join(f"`{p['node']}`" for p in plan.policy)
        lines += [f"**Policy:** the desired state `{plan.policy[0]['want'][:12]}` is pushed to {nodes}", ""]
    if not plan.traces:
        settled = settled_line(plan)
        lines.append(settled[0].upper() + settled[1:] + ".")
        return "\n".join(lines) + "\n"
    lines += ["| transition | trace | decision | why |", "|---|---|---|---|"]
    for t in plan.traces:
        why = t.reason.replace("|", "\\|")
        lines.append(f"| g={t.g} {t.phase} | `{t.trace_id}` | **{t.verdict}** ({t.state}) | {why} |")
    for t in plan.traces:
        if not t.steps:
            continue
        lines += ["", f"<details><summary>g={t.g} {t.phase}: {len(t.steps)} steps</summary>", ""]
        for i, s in enumerate(t.steps, 1):
            key = f" `{s['key']}`" if s.get("key") else ""
            lines.append(f"{i}. `{s['node']}` **{s['action']}**{key}: {s['detail']}")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


class PlanFormat(StrEnum):
    text = "text"
    markdown = "markdown"


def _cost_line(cost: list[dict[str, Any]]) -> str:
    parts = [f"{c['amount']:.2f} {c['currency']} of {c['limit']:g} in {c['region']}" for c in cost]
    return "    cost so far: " + "; ".join(parts)


def _tampered_lines(tampered: dict[str, list[str]]) -> None:
    for node, problems in sorted(tampered.items()):
        for problem in problems:
            _render.out(
                _render.runnable(f"integrity: {node}: {problem} ('haios doctor' says how to restore it)"), style="red"
            )


def _unreadable_lines(unreadable: dict[str, str]) -> None:
    for problem in unreadable.values():
        _render.out(
            _render.runnable(f"cannot use {problem} (what needs it waits; 'haios validate' says more)"), style="red"
        )


def _refused_line(refused: list[str]) -> None:
    if refused:
        _render.out(
            _render.runnable(
                f"refused, host key not the pinned one: {', '.join(refused)} ('haios doctor' shows the fingerprints)"
            ),
            style="red",
        )


def _unreached_lines(unreached: dict[str, dict[str, str]]) -> None:
    for why in unreached.values():
        _render.out(f"not reached: {why['error']}", style="red")
        if why.get("hint"):
            _render.out(f"    fix: {_render.runnable(why['hint'])}", style="cyan")


def _abandoned_lines(abandoned: list[dict[str, Any]]) -> None:
    """HARD_FAILED traces that left compensations behind, and the override that retries them."""
    for a in abandoned:
        what = ", ".join(f"{x['key']} on {x['node']} ({x['compensator']})" for x in a["abandoned"])
        _render.out(f"HARD_FAILED {a['trace_id']} g={a['g']} {a['phase']} left uncompensated: {what}", style="red")
        _render.out(f"    retry: {_render.runnable(a['retry'])}", style="cyan")


def _membership_lines(membership: dict[str, Any]) -> None:
    for node in membership.get("evicted") or []:
        _render.out(_render.runnable(f"evicted: {node} (takes no part until: haios node rejoin {node})"))
    if membership.get("pending_eviction"):
        _render.out(f"pending eviction: {', '.join(membership['pending_eviction'])}", style="yellow")
    if membership.get("eviction_blocked"):
        _render.out(
            f"eviction refused, no healthy majority would remain: {', '.join(membership['eviction_blocked'])}",
            style="red",
        )


_EFFECT_STYLE = {"applies": "cyan", "continuing": "cyan", "pending": "yellow", "waiting": "yellow", "expired": None}


def _override_lines(rows: list[dict[str, Any]]) -> None:
    """Each override in overrides/ with what this run does with it (files already applied to a trace
    that has ended are left out)."""
    for r in rows:
        if r.get("effect") == "applied":
            continue
        what = f"{r['action']} trace {r['trace_id']}" if r.get("action") else "unreadable"
        why = f": {r['why']}" if r.get("why") else ""
        _render.out(f"override {r['file']} ({what}): {r['effect']}{why}", style=_EFFECT_STYLE.get(r["effect"], "red"))


def _policy_lines(owed: list[dict[str, Any]]) -> None:
    """The members reconcile would give the committed desired state (their policy is older)."""
    if owed:
        nodes = ", ".join(p["node"] for p in owed)
        _render.out(f"policy: push the desired state {owed[0]['want'][:12]} to {nodes}", style="cyan")


def _print_plan(plan: Plan) -> None:
    desired = (plan.desired_commit or "uncommitted")[:12]
    _render.out(
        f"plan for cluster {plan.cluster}: {len(plan.reachable)} of {len(plan.active)} active members reachable; "
        f"desired {desired}; observed {plan.observed_hash[:23]}…"
    )
    if plan.minority:
        _render.out(
            "minority view: reconcile changes nothing until a majority of the active members is reachable",
            style="red",
        )
    if plan.suspended:
        _render.out("suspended: reconcile plans only", style="yellow")
    _refused_line(plan.refused)
    _tampered_lines(plan.tampered)
    _unreadable_lines(plan.unreadable)
    _membership_lines(plan.membership)
    _override_lines(plan.overrides)
    _unreached_lines(plan.unreached)
    _abandoned_lines(plan.abandoned)
    _policy_lines(plan.policy)
    if not plan.traces:
        settled = not plan.unreached and not plan.refused
        _render.out(settled_line(plan), style="green" if settled else "red")
    for t in plan.traces:
        style = {"forward": "cyan", "rollback": "yellow", "resume": "cyan", "wait": None}.get(t.verdict, "red")
        resumed = ", resumed" if t.resumed else ""
        _render.out(f"g={t.g} {t.phase}  trace {t.trace_id}  {t.verdict} ({t.state}{resumed})", style=style)
        _render.out(f"    why: {t.reason}")
        if t.override is not None:
            o = t.override
            who = ", ".join(o.get("signers") or []) or "-"
            extra = f": {o['why']}" if o.get("why") else ""
            _render.out(f"    override: {o['action']} ({o['file']}, signed by {who}): {o['effect']}{extra}")
        if t.cost and (t.verdict in ("rollback", "needs_human") or any(c["over"] for c in t.cost)):
            _render.out(_cost_line(t.cost))
        if t.held_by:
            held = t.held_by
            _render.out(
                f"    lease held by {holder_words(str(held['holder']))} for trace {held['trace_id']} "
                f"until {utc(float(held['expires']))}",
                style="red",
            )
        for i, s in enumerate(t.steps, 1):
            key = f" {s['key']}" if s.get("key") else ""
            _render.out(f"    {i}. {s['node']}  {s['action']}{key}: {s['detail']}")


def plan(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Also write the plan (JSON) to this file, for 'reconcile --plan'.", show_default=False
        ),
    ] = None,
    fmt: Annotated[
        PlanFormat, typer.Option("--format", help="text, or markdown for a pull-request comment.")
    ] = PlanFormat.text,
    max_parallel: MaxParallelOpt = DEFAULT_PARALLEL,
    metrics_textfile: MetricsTextfileOpt = None,
    pushgateway: PushgatewayOpt = None,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Show what reconcile would do, changing nothing.

    Exit 0 nothing to do, 2 actions pending, 3 blocked (needs a human, or minority view), 4 a shard
    is leased by another reconciler.
    """
    opts = resolve(ctx, repo=repo, output=output)
    result, seen = build(opts.repo, parallelism=max_parallel)
    close_transport(seen.transport)
    if result.uncommitted:
        _render.err(
            f"warning: uncommitted edits to the desired state ({', '.join(result.uncommitted)}): this plan reads "
            "them as they are; reconcile refuses them unless --allow-dirty"
        )
    write_if_asked(opts.repo, metrics_textfile, pushgateway)
    if out is not None:
        atomic_write(out, (json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n").encode())
    if opts.output is Output.ndjson:
        for event in plan_events(result):
            _render.emit_event(event)
    elif opts.output is not Output.text:
        _render.emit_json(result.to_json())
    elif fmt is PlanFormat.markdown:
        _render.raw(render_markdown(result))
    else:
        _print_plan(result)
        code = result.exit_code()
        _render.info(f"exit {code}: {_CODES.get(code, '')}")
    return result.exit_code()


def _stderr_is_a_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def _progress(opts: GlobalOptions) -> Iterator[Progress | None]:
    """A bar per node while steps run, when stderr is a terminal."""
    if opts.quiet or opts.output is not Output.text or not _stderr_is_a_terminal():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.progress import Progress as Bars

    bars = Bars(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=_render.console(stderr=True)
    )
    tasks: dict[str, Any] = {}

    def update(event: dict[str, Any]) -> None:
        node = event.get("node") or "-"
        if node not in tasks:
            tasks[node] = bars.add_task(node, total=event["node_total"])
        bars.update(tasks[node], description=f"{node} {event['action']}", advance=1 if event["finished"] else 0)

    with bars:
        yield update


def _print_result(result: RunResult) -> None:
    verbs = {
        "forward": "rolled forward",
        "rollback": "rolled back",
        "resume": "resumed",
        "abort": "aborted",
        "retry": "retried",
    }
    if result.note:
        _render.out(result.note, style="yellow")
    _refused_line(result.plan.refused)
    _tampered_lines(result.plan.tampered)
    _unreadable_lines(result.plan.unreadable)
    _membership_lines(result.plan.membership)
    _override_lines([r for r in result.plan.overrides if r.get("effect") != "applies"])
    _unreached_lines(result.plan.unreached)
    for p in result.policy:
        if p["outcome"] == "failed":
            _render.out(f"policy not pushed to {p['node']}: {p.get('error')} (a later run pushes it)", style="yellow")
        elif p["outcome"] == "pushed":
            _render.out(f"policy pushed to {p['node']} ({p['digest'][:12]})", style="green")
    for p in result.vclock.get("pruned") or []:
        _render.out(
            f"vclock: {p['node']}'s entry pruned (tombstone: counter {p['last_counter']}, final clock read from "
            f"{p['source']})",
            style="green",
        )
    for node, why in sorted((result.vclock.get("waiting") or {}).items()):
        _render.out(f"vclock: {node}'s entry kept for now: {why}", style="yellow")
    if result.vclock.get("error"):
        _render.out(f"vclock: nothing pruned: {result.vclock['error']}", style="yellow")
    if not result.outcomes and not result.note:
        settled = not result.plan.unreached and not result.plan.refused
        what = "nothing else to do" if any(p["outcome"] == "pushed" for p in result.policy) else "nothing to do"
        _render.out(f"{what}: {settled_line(result.plan)}", style="green" if settled else "yellow")
    for o in result.outcomes:
        token = f", token {o.token}" if o.token is not None else ""
        what = verbs.get(o.verdict, o.verdict) if o.steps else o.verdict
        style = "green" if o.after in ("CLEAN_EXIT", "ABORTED") else ("red" if o.code in (1, 3, 4) else "yellow")
        _render.out(
            f"g={o.g} {o.phase}  trace {o.trace_id}  {o.before} -> {o.after}  ({what}, {o.steps} steps{token})",
            style=style,
        )
        if o.override:
            _render.out(f"    applied override: {o.override['action']} from {o.override['file']}")
        if o.note:
            _render.out(f"    {o.note}")
        if o.cost and o.code == 3:
            _render.out(_cost_line(o.cost))
    for a in result.alerts:
        mark = {"firing": "ALERT", "raised": "ALERT", "resolved": "resolved"}[a["state"]]
        _render.out(
            f"{mark} {a['alert']} ({a['severity']}): {a['message']}",
            style="green" if a["state"] == "resolved" else "red",
        )
    if result.next_due is not None and result.exit_code() == 2:
        _render.out(f"next work due at {utc(result.next_due)}")
    if result.commit:
        _render.out(
            f"audit: committed {result.commit[:12]}" + (f", pushed to {result.pushed_to}" if result.pushed_to else "")
        )


def reconcile(
    ctx: typer.Context,
    plan_file: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="Execute exactly this plan (refused if the cluster or desired state changed).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only: the same as 'haios plan'.")] = False,
    push: Annotated[
        bool,
        typer.Option("--push", help="Push the audit commit, and any an earlier run could not push, to the remote."),
    ] = False,
    allow_dirty: Annotated[
        bool,
        typer.Option("--allow-dirty", help="Act on uncommitted edits to the desired state instead of refusing them."),
    ] = False,
    remote: Annotated[
        str | None, typer.Option("--remote", help="The remote for --push (default: origin).", show_default=False)
    ] = None,
    max_parallel: MaxParallelOpt = DEFAULT_PARALLEL,
    metrics_textfile: MetricsTextfileOpt = None,
    pushgateway: PushgatewayOpt = None,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Drive every half-done transition back to a known-good state and record it in git.

    Exit 0 converged, 2 work remains for a later run, 3 blocked (needs a human, or minority view), 4 a
    lock is held by another reconciler or this one was fenced, 1 a step failed.
    """
    if dry_run:
        if plan_file is not None:
            raise UsageError("--dry-run and --plan do not go together")
        return plan(
            ctx,
            out=None,
            fmt=PlanFormat.text,
            metrics_textfile=metrics_textfile,
            pushgateway=pushgateway,
            repo=repo,
            output=output,
        )
    opts = resolve(ctx, repo=repo, output=output)
    given = None
    if plan_file is not None:
        try:
            given = Plan.from_json(read_json(plan_file, within=plan_file.parent))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"{plan_file}: not a readable plan ({exc})") from exc
        except HaiosError as exc:
            raise UsageError(f"{plan_file}: {exc.message}") from exc
    with _progress(opts) as progress:
        result = run_reconcile(
            opts.repo,
            plan=given,
            progress=progress,
            push=push,
            remote=remote,
            parallelism=max_parallel,
            events=_render.emit_event if opts.output is Output.ndjson else None,
            allow_dirty=allow_dirty,
        )
    if result.uncommitted:
        _render.err(f"warning: acted on uncommitted edits to the desired state: {', '.join(result.uncommitted)}")
    if result.pushed_owed:
        _render.info(
            f"pushed {result.pushed_owed} audit commit{'s' if result.pushed_owed != 1 else ''} an earlier run owed"
        )
    write_if_asked(opts.repo, metrics_textfile, pushgateway)
    if opts.output is Output.json:
        _render.emit_json(result.to_json())
    elif opts.output is Output.text:
        _print_result(result)
    # (ndjson: every event went out as it happened)
    return result.exit_code()


def audit(
    ctx: typer.Context,
    trace: Annotated[
        str | None, typer.Option("--trace", help="Only this trace, with its journal.", show_default=False)
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="At most this many commits.", min=1, show_default=False)
    ] = None,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """The audit trail: every reconcile commit, newest first, with its traces and results."""
    opts = resolve(ctx, repo=repo, output=output)
    require_repo(opts.repo)
    entries = audit_lib.history(opts.repo, trace_id=trace, limit=limit)
    journal = find_journal(opts.repo, trace) if trace else None
    if trace and not entries and journal is None:
        raise UsageError(f"{opts.repo}: no trace {trace!r} in the audit trail")
    if opts.output is not Output.text:
        data: dict[str, Any] = {"schema": "haios-audit/v1", "commits": [e.as_dict() for e in entries]}
        if journal is not None:
            data["journal"] = journal.as_dict()
        _render.emit_json(data)
        return 0
    for e in entries:
        _render.out(f"{e.commit[:12]} {e.date} {e.subject}", style="bold")
        for t in e.traces:
            _render.out(f"    {t['trace_id']}: {t.get('result')} (token {t.get('fencing_token')})")
    if journal is not None:
        _render.out("")
        _render.out(f"trace {journal.trace_id}: g={journal.g} {journal.phase}, {journal.state}", style="bold")
        _render.out(f"    decision: {journal.decision}: {journal.reason}")
        _render.out(f"    fencing tokens: {', '.join(map(str, journal.tokens)) or '-'}")
        for s in journal.steps:
            extra = " ".join(
                f"{k}={_render.words(v, k)}" if not isinstance(v, dict) else f"{k}=({_render.words(v, k)})"
                for k, v in s.items()
                if k not in ("at", "node", "action", "outcome")
            )
            _render.out(f"    {s['at']} {s.get('node') or '-'} {s['action']}: {s['outcome']} {extra}".rstrip())
        for a in journal.alerts:
            _render.out(f"    ALERT {a['alert']}: {a['message']}", style="red")
    if not entries and journal is None:
        _render.out("no reconcile has changed anything yet")
    return 0
