"""The desired state on the nodes: which members' ``policy`` files are behind, and pushing them.

Every reconcile compiles the desired state (:meth:`haios.config.model.RepoConfig.compile_policy`) and
compares its digest with the one each member's ``policy`` file names (read by the observation).
A member whose digest differs gets the compiled policy, under a lease on the backend's policy shard
(its fencing token goes with the push, so a stale reconciler's push is refused by the node). A member
that cannot be reached gets it on a later run; what was pushed, and where it still is owed, goes
into ``status/policy.yaml`` and the run's audit commit. The node enforces what it holds: no BEGIN
beyond ``max_g``, none while suspended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..audit import Recorder
from ..config.yamlload import load_status
from ..controlfile import dump_mapping
from ..coord import new_holder
from ..errors import HaiosError, LockHeldError
from ..events import Sink, make
from ..fsutil import atomic_write, makedirs_durable
from ..layout import POLICY_FILE
from ..node.fence import POLICY_SHARD
from ..recovery.model import Context, Plan, RunResult
from ..recovery.nodeops import push_policy
from ..timefmt import utc
from ..transport.base import fan_out


def members(ctx: Context) -> list[str]:
    """The nodes a policy goes to: every node of haios.yaml the desired membership does not list as
    decommissioned (an isolated or evicted node still learns a freeze)."""
    gone = {name for name, m in ctx.config.desired.membership.items() if m.status == "decommissioned"}
    return [n.name for n in ctx.config.cluster.nodes if n.name not in gone]


def owed(ctx: Context, digest: str) -> list[dict[str, Any]]:
    """The members observed holding a policy whose digest is not ``digest`` (what a plan shows); a
    member not observed is not listed: a later run, or ``doctor``, finds it."""
    out = []
    for node in members(ctx):
        obs = ctx.observations.get(node)
        if obs is None or not obs.reachable or obs.refused:
            continue
        if obs.policy_digest != digest:
            out.append({"node": node, "have": obs.policy_digest, "want": digest})
    return out


def push(
    ctx: Context, plan: Plan, clock: Callable[[], float], emit: Sink, holder: str | None = None
) -> list[dict[str, Any]]:
    """Push the compiled desired state to the members the plan found behind; returns one entry per
    member: node, outcome (``pushed``, ``already current``, ``failed``), digest or error."""
    if not plan.policy:
        return []
    policy = ctx.config.compile_policy(plan.desired_commit)
    ttl = ctx.config.thresholds.lease_ttl
    try:
        lease = ctx.backend.acquire(POLICY_SHARD, holder or new_holder(), "policy", ttl, clock())
    except LockHeldError as exc:
        out = [{"node": p["node"], "outcome": "failed", "error": exc.message} for p in plan.policy]
        for entry in out:
            emit(make("policy", **entry))
        return out
    nodes = [item["node"] for item in plan.policy]
    done: dict[str, dict[str, Any]] = {}
    try:
        push = lambda n: push_policy(ctx.transport, n, token=lease.token, policy=policy)  # noqa: E731
        pushes = fan_out(ctx.transport, nodes, push, parallelism=ctx.parallelism)
        for node, answer in pushes:  # as each member answers (remote members several at once)
            if isinstance(answer, HaiosError):  # unreachable, fenced, refused: it gets it on a later run
                entry = {"node": node, "outcome": "failed", "error": answer.message}
            else:
                entry = {"node": node, "outcome": str(answer.get("outcome")), "digest": policy["digest"]}
            done[node] = entry
            emit(make("policy", node=node, **{k: v for k, v in entry.items() if k != "node"}))
    finally:
        ctx.backend.release(lease, clock())
    out = [done[node] for node in nodes]
    _remember(ctx, policy, out, clock())
    return out


def _remember(ctx: Context, policy: dict[str, Any], pushed: list[dict[str, Any]], now: float) -> None:
    """``status/policy.yaml``: per member, the digest and desired commit it was last given, and when."""
    path = ctx.repo / POLICY_FILE
    try:
        known = load_status(path, "a haios policy record", POLICY_FILE)
    except HaiosError:
        known = None  # a damaged record is rebuilt from what this run pushed (git keeps the old one)
    nodes = known.get("nodes") if isinstance(known, dict) else None
    nodes = {str(k): v for k, v in nodes.items() if isinstance(v, dict)} if isinstance(nodes, dict) else {}
    for entry in pushed:
        if entry["outcome"] in ("pushed", "already current"):
            nodes[entry["node"]] = {
                "digest": policy["digest"],
                "desired_commit": policy.get("desired_commit"),
                "pushed_at": utc(now),
            }
    body = dump_mapping({"digest": policy["digest"], "nodes": dict(sorted(nodes.items()))})
    makedirs_durable(path.parent)
    atomic_write(path, body)


def lines(result: RunResult) -> list[str]:
    """The pushes of a run in words, for its audit commit."""
    return [
        f"policy {p['outcome']} on {p['node']}" + (f" ({p['digest'][:12]})" if "digest" in p else f": {p.get('error')}")
        for p in result.policy
    ]


def commit_alone(ctx: Context, result: RunResult, recorder: Recorder) -> None:
    """The audit commit of a run whose only change is the policy pushed (a suspended cluster)."""
    if not any(p["outcome"] == "pushed" for p in result.policy):
        return
    pushed = sorted(p["node"] for p in result.policy if p["outcome"] == "pushed")
    subject = f"haios reconcile: policy pushed to {', '.join(pushed)}"
    if len(subject) > 100:
        subject = f"haios reconcile: policy pushed to {len(pushed)} nodes"
    result.commit = recorder.commit_run([POLICY_FILE], subject, lines(result), [], result.plan.observed_hash)
