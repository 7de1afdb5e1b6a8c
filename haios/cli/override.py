"""``haios override new|sign|verify``: signed human decisions on a trace (SPEC §5)."""

from __future__ import annotations

import io
import json
import secrets
import time
from pathlib import Path
from typing import Annotated

import typer

from ..config import load_repo, parse_duration
from ..config.validate import check_override_file, payload_problems
from ..errors import SignatureError, UsageError, VerificationError
from ..fsutil import atomic_write, makedirs_durable
from ..ops.observe import applied_nonces
from ..overrides.apply import mark_spent, replay_problem, scan, spent_on
from ..overrides.sshsig import sign
from ..overrides.verify import NAMESPACE, PAYLOAD_SCHEMA, Verdict, check
from . import _render
from ._options import Output, OutputOpt, RepoOpt, resolve

app = typer.Typer(help="Signed overrides: supervisors' k-of-n decisions on a trace.", no_args_is_help=True)
ACTIONS = ("resume", "abort", "force-rollback")


@app.command()
def new(
    ctx: typer.Context,
    trace: Annotated[str, typer.Option("--trace", help="The trace to act on.", show_default=False)],
    action: Annotated[str, typer.Option("--action", help="resume, abort or force-rollback.", show_default=False)],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit trail.", show_default=False)],
    expires: Annotated[str, typer.Option("--expires", help="How long it stays valid.")] = "24h",
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Write overrides/TRACE.yaml with the canonical payload (fresh nonce, issued now) and no signatures."""
    opts = resolve(ctx, repo=repo, output=output)
    if action not in ACTIONS:
        raise UsageError(f"--action must be one of {', '.join(ACTIONS)} (got {action!r})")
    try:
        lifetime = parse_duration(expires)
    except ValueError as exc:
        raise UsageError(f"--expires: {exc}") from None
    config = load_repo(opts.repo, overrides=False)
    now = int(time.time())
    payload = {
        "schema": PAYLOAD_SCHEMA,
        "cluster": config.cluster.name,
        "trace_id": trace,
        "action": action,
        "reason": reason,
        "issued_at": now,
        "expires_at": now + int(lifetime),
        "nonce": secrets.token_hex(16),
        "policy_version": config.rbac.policy_version,
    }
    problems = payload_problems(payload)  # before anything touches the file system
    if problems:
        raise UsageError(f"the override would not be valid: {problems[0]}")
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    path = opts.repo / "overrides" / f"{trace}.yaml"
    if path.exists():
        raise UsageError(f"{path} exists", hint="remove it first, or sign that one")
    body = (
        "apiVersion: haios/v1\nkind: Override\npayload: " + json.dumps(text, ensure_ascii=False) + "\nsignatures: []\n"
    )
    makedirs_durable(path.parent)
    atomic_write(path, body.encode("utf-8"))
    _, written = check_override_file(opts.repo, path)
    if written:
        path.unlink()
        raise UsageError(f"the override would not be valid: {written[0]}")
    if opts.output is not Output.text:
        _render.emit_json({"file": str(path), "payload": payload})
    else:
        _render.out(
            f"wrote {path}: {action} trace {trace}, valid until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now + int(lifetime)))}"
        )
        _render.info(f"next: haios override sign {path} --principal NAME --key ~/.ssh/id_ed25519")
    return 0


@app.command("sign")
def sign_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The override file.", exists=True, dir_okay=False, show_default=False)],
    principal: Annotated[str, typer.Option("--principal", help="Your name in policies/rbac.yaml.", show_default=False)],
    key: Annotated[Path, typer.Option("--key", help="Your OpenSSH private key (unencrypted).", show_default=False)],
    hash_algorithm: Annotated[str, typer.Option("--hash", help="sha512 (as ssh-keygen) or sha256.")] = "sha512",
    repo: RepoOpt = None,
) -> int:
    """Append your SSH signature over the exact payload bytes (namespace haios-override) — the same
    format as 'ssh-keygen -Y sign -n haios-override', which you can use instead for agent or hardware keys."""
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import LiteralScalarString

    opts = resolve(ctx, repo=repo)
    override, problems = check_override_file(opts.repo, file)
    if override is None:
        raise VerificationError(
            f"{file}: not a valid override: {problems[0]}", hint="haios validate shows every problem"
        )
    try:
        armored = sign(override.payload.encode("utf-8"), key, NAMESPACE, hash_algorithm=hash_algorithm)
    except SignatureError as exc:
        raise UsageError(str(exc)) from None
    yaml = YAML(typ="rt")
    yaml.width = 4096
    doc = yaml.load(file.read_text(encoding="utf-8"))
    doc["signatures"].append({"principal": principal, "sig": LiteralScalarString(armored)})
    buf = io.StringIO()
    yaml.dump(doc, buf)
    atomic_write(file, buf.getvalue().encode("utf-8"))
    _render.out(f"{file}: signed by {principal}")
    return 0


def _print(verdict: Verdict) -> None:
    _render.out(f"{verdict.file}: {verdict.action} trace {verdict.trace_id}")
    for problem in verdict.problems:
        _render.out(f"    payload rejected: {problem}", style="red")
    for s in verdict.signatures:
        mark = "accepted" if s.accepted else "rejected"
        key = f" ({s.fingerprint}, {s.hash_algorithm})" if s.fingerprint else ""
        _render.out(f"    {s.principal}{key}: {mark}: {s.reason}", style="green" if s.accepted else "red")
    tally = f"have {verdict.have} of {verdict.need} required ({verdict.supervisors} active supervisors)"
    _render.out(f"    {tally}: {'VALID' if verdict.valid else 'NOT VALID'}", style="green" if verdict.valid else "red")


@app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Override files (a pull request's overrides/*.yaml).")],
    nodes: Annotated[
        bool,
        typer.Option(
            "--nodes",
            help="Read the nodes' WALs now for nonces already applied (else: as the last doctor, plan or "
            "reconcile saw them).",
        ),
    ] = False,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Check every rule of an override (docs/overrides.md) and the k-of-n threshold. Exit 0 when every file is valid, 5 otherwise.

    A nonce that a node's WAL says was applied makes the override a replay, even when status/ was
    restored from before it."""
    opts = resolve(ctx, repo=repo, output=output)
    config = load_repo(opts.repo, overrides=False)  # each override is judged below, on its own
    now = time.time()
    spent = spent_on(applied_nonces(opts.repo, config, fresh=nodes))
    verdicts = []
    for path in files:
        override, problems = check_override_file(opts.repo, path)
        if override is None:
            verdict = Verdict(str(path), problems=[str(p) for p in problems])
            verdict.need = 1
        else:
            verdict = check(config, override, now)
            if verdict.nonce is not None and verdict.nonce in spent:
                verdict.problems.append(replay_problem(verdict.nonce, spent[verdict.nonce]))
        verdicts.append(verdict)
    if opts.output is not Output.text:
        _render.emit_json({"schema": "haios-override-verify/v1", "overrides": [v.as_dict() for v in verdicts]})
    else:
        for verdict in verdicts:
            _print(verdict)
    return 0 if verdicts and all(v.valid for v in verdicts) else 5


@app.command("list")
def list_cmd(ctx: typer.Context, repo: RepoOpt = None, output: OutputOpt = None) -> int:
    """Every override in overrides/ with its state: pending, valid, applied, expired or rejected.

    An override whose nonce a node's WAL holds (as the last doctor, plan or reconcile saw it) is
    applied, even when status/ was restored from before it."""
    opts = resolve(ctx, repo=repo, output=output)
    config = load_repo(opts.repo)
    offers = scan(config, time.time())
    mark_spent(offers, applied_nonces(opts.repo, config))
    rows = [
        {
            "file": o.file,
            "trace_id": o.trace_id,
            "action": o.action,
            "state": o.state,
            "have": o.have,
            "need": o.need if o.trace_id is not None else None,
            "why": o.why if o.state in ("rejected", "applied", "expired") else "",
        }
        for o in offers
    ]
    if opts.output is not Output.text:
        _render.emit_json({"schema": "haios-override-list/v1", "overrides": rows})
        return 0
    if not rows:
        _render.out("no overrides")
    for r in rows:
        tally = f"{r['have']} of {r['need']}" if r.get("need") else "-"
        extra = f": {r['why']}" if r.get("why") else ""
        _render.out(f"{r['file']}  {r.get('action', '-')} {r.get('trace_id', '-')}  {r['state']} ({tally}){extra}")
    return 0
