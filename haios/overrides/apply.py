"""Overrides as reconcile sees them (SPEC §5): every file in ``overrides/`` judged by the verifier's
rules with this machine's clock, and the record of those applied, ``status/overrides/applied.yaml``.

An override acts once. Reconcile writes the grant into the trace's journal first and then the nonce
and payload hash here; a run killed between the two finds the nonce in the journal and only finishes
the record, so an override is never carried out twice and never lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.model import RepoConfig
from ..config.validate import check_override_file
from ..controlfile import dump_mapping
from ..errors import HaiosError
from ..fsutil import locked_dir, makedirs_durable, replace_in_dir
from ..layout import APPLIED_FILE
from ..untrusted import in_repo
from .verify import applied, check, state_of

APPLIED_SCHEMA = "haios-overrides-applied/v1"
OVERRIDES_DIR = "overrides"
RBAC_FILE = "policies/rbac.yaml"


@dataclass
class Offer:
    """One override file and what the verifier says of it now."""

    file: str  # relative to the repo
    state: str  # valid | pending | rejected | expired | applied
    why: str = ""
    trace_id: str | None = None
    action: str | None = None
    nonce: str | None = None
    payload_sha256: str | None = None
    policy_version: int = 0
    signers: list[str] = field(default_factory=list)  # the people counted
    have: int = 0
    need: int = 1
    unjudged: bool = False  # a file judging it needs cannot be read: the trace it names waits

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "state": self.state,
            "why": self.why,
            "trace_id": self.trace_id,
            "action": self.action,
            "nonce": self.nonce,
            "payload_sha256": self.payload_sha256,
            "signers": self.signers,
            "have": self.have,
            "need": self.need,
        }


def judge(config: RepoConfig, path: Path, now: float) -> Offer:
    """Every rule of SPEC §5 for one file of ``overrides/``, at ``now``."""
    repo = config.path
    name = str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)
    override, problems = check_override_file(repo, path)
    if override is None:
        return Offer(name, "rejected", str(problems[0]) if problems else "not a valid override")
    trace_id = str(json.loads(override.payload).get("trace_id") or path.name.removesuffix(".yaml"))
    rbac = config.blocking(RBAC_FILE)
    if rbac:  # who may sign is unknown: nothing is valid, and the trace it names waits (plan)
        return Offer(name, "rejected", f"cannot be judged: {rbac[0]}", trace_id, unjudged=True)
    try:
        verdict = check(config, override, now)
        done = applied(repo)
    except HaiosError as exc:  # the record of applied overrides is unreadable: nothing can be judged
        return Offer(name, "rejected", f"cannot be judged: {in_repo(repo, exc.one_line())}", trace_id, unjudged=True)
    payload = json.loads(override.payload)
    state = state_of(verdict, done["nonces"], now, payload["expires_at"])
    if state in ("rejected", "expired", "applied"):
        why = "; ".join(verdict.problems)
    elif state == "pending":
        why = f"have {verdict.have} of {verdict.need} required signatures"
    else:
        why = f"signed by {verdict.have} of {verdict.need} required"
    return Offer(
        name,
        state,
        why,
        verdict.trace_id,
        verdict.action,
        verdict.nonce,
        verdict.payload_sha256,
        int(payload["policy_version"]),
        sorted(s.principal for s in verdict.signatures if s.accepted),
        verdict.have,
        verdict.need,
    )


def scan(config: RepoConfig, now: float) -> list[Offer]:
    """Every file in ``overrides/``, judged at ``now`` (a malformed one is rejected, not an error:
    one bad file must not stop the recovery of every other trace)."""
    directory = config.path / OVERRIDES_DIR
    if not directory.is_dir():
        return []
    return [judge(config, path, now) for path in sorted(directory.glob("*.yaml"))]


def spent_on(nonces_of: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """nonce -> the nodes whose WAL says it was applied (``nonces_of``: node -> the nonces its WAL holds)."""
    spent: dict[str, list[str]] = {}
    for node, nonces in sorted(nonces_of.items()):
        for nonce in nonces:
            spent.setdefault(nonce, []).append(node)
    return spent


def replay_problem(nonce: str, nodes: list[str]) -> str:
    return f"a replay: nonce {nonce} was already applied on {', '.join(nodes)} (their WALs say so)"


def mark_spent(offers: list[Offer], nonces_of: Mapping[str, Iterable[str]]) -> None:
    """Offers whose nonce a node's WAL says was applied (``nonces_of``: node -> the nonces its WAL
    holds) are applied, whatever ``status/`` says: a record lost to a revert or a restore makes no
    replay."""
    spent = spent_on(nonces_of)
    for offer in offers:
        if offer.nonce in spent and offer.state in ("valid", "pending"):
            offer.state = "applied"
            offer.why = replay_problem(offer.nonce, spent[offer.nonce])


def record(repo: Path, trace_id: str, entry: dict[str, Any], *, desired_commit: str | None) -> bool:
    """Write an applied override (its journal ``entry``: nonce, action, file, payload hash, signers,
    policy_version, applied_at) into ``status/overrides/applied.yaml``, atomically and under a lock;
    False when its nonce is there already."""
    path = repo / APPLIED_FILE
    makedirs_durable(path.parent)
    with locked_dir(path.parent) as dir_fd:
        done = applied(repo)
        nonce = str(entry["nonce"])
        if nonce in done["nonces"]:
            return False
        done["nonces"][nonce] = {
            "trace_id": trace_id,
            "action": entry["action"],
            "file": entry["file"],
            "payload_sha256": entry["payload_sha256"],
            "signers": list(entry["signers"]),
            "applied_at": entry["applied_at"],
            "desired_commit": desired_commit,
        }
        body = {
            "schema": APPLIED_SCHEMA,
            "policy_version": max(done["policy_version"], int(entry["policy_version"])),
            "nonces": {k: done["nonces"][k] for k in sorted(done["nonces"])},
        }
        replace_in_dir(dir_fd, path.parent, path.name, dump_mapping(body))
    return True
