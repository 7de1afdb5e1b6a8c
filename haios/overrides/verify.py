"""Verifying an override (SPEC §5): the payload, each signature, and the k-of-n tally.

Every time check uses the verifier's own clock, never a time taken from the file. People are
counted, not signatures: one person counts once whatever keys or hash algorithms they used, and a
key counts for one person only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.model import Override, RepoConfig, Supervisor, parse_time
from ..config.yamlload import load_status
from ..errors import ConfigError, SignatureError
from ..layout import APPLIED_FILE
from ..sshkeys import parse_public_key
from .sshsig import verify

NAMESPACE = "haios-override"
PAYLOAD_SCHEMA = "haios-override/v1"


def _when(text: str | None) -> float | None:
    return None if text is None else parse_time(text).timestamp()


def active(s: Supervisor, now: float) -> bool:
    """Active, and within its validity window by this machine's clock."""
    after, before = _when(s.valid_after), _when(s.valid_before)
    return s.active and (after is None or now >= after) and (before is None or now < before)


def threshold(config: RepoConfig, now: float) -> tuple[int, int]:
    """(signers needed, active supervisors): min(⌈N/2⌉, 3), at least 1."""
    n = sum(1 for s in config.rbac.supervisors if active(s, now))
    return max(1, min(math.ceil(n / 2), 3)), n


@dataclass
class SignatureCheck:
    principal: str
    accepted: bool
    reason: str
    fingerprint: str | None = None
    hash_algorithm: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "accepted": self.accepted,
            "reason": self.reason,
            "fingerprint": self.fingerprint,
            "hash_algorithm": self.hash_algorithm,
        }


@dataclass
class Verdict:
    file: str
    trace_id: str | None = None
    action: str | None = None
    problems: list[str] = field(default_factory=list)  # the payload's: any one voids the override
    signatures: list[SignatureCheck] = field(default_factory=list)
    have: int = 0
    need: int = 1
    supervisors: int = 0
    nonce: str | None = None
    payload_sha256: str | None = None

    @property
    def valid(self) -> bool:
        return not self.problems and self.have >= self.need

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "trace_id": self.trace_id,
            "action": self.action,
            "valid": self.valid,
            "have": self.have,
            "need": self.need,
            "active_supervisors": self.supervisors,
            "problems": self.problems,
            "signatures": [s.as_dict() for s in self.signatures],
        }


def applied(repo: Path) -> dict[str, Any]:
    """What reconcile recorded of applied overrides: their nonces and the highest policy_version."""
    what = "a readable record of applied overrides"
    data = load_status(repo / APPLIED_FILE, what, APPLIED_FILE) or {}
    nonces = data.get("nonces") or {} if isinstance(data, dict) else None
    version = data.get("policy_version") or 0 if isinstance(data, dict) else None
    if not isinstance(nonces, dict) or not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(
            f"{repo / APPLIED_FILE}: not {what} (nonces must be a mapping, policy_version an integer)",
            hint=f"restore it from git (git checkout -- {APPLIED_FILE})",
        )
    return {"nonces": {str(k): v for k, v in nonces.items()}, "policy_version": version}


def check(config: RepoConfig, override: Override, now: float, *, trace_id: str | None = None) -> Verdict:
    """Every rule of SPEC §5 for one override (already schema-checked and canonical)."""
    import hashlib

    verdict = Verdict(override.file)
    payload = json.loads(override.payload)
    verdict.trace_id, verdict.action, verdict.nonce = payload["trace_id"], payload["action"], payload["nonce"]
    verdict.payload_sha256 = hashlib.sha256(override.payload.encode()).hexdigest()
    verdict.need, verdict.supervisors = threshold(config, now)
    skew = config.thresholds.max_clock_skew
    if payload["schema"] != PAYLOAD_SCHEMA:
        verdict.problems.append(f"schema {payload['schema']!r}, expected {PAYLOAD_SCHEMA}")
    if payload["cluster"] != config.cluster.name:
        verdict.problems.append(f"for cluster {payload['cluster']!r}, not {config.cluster.name!r}")
    if trace_id is not None and payload["trace_id"] != trace_id:
        verdict.problems.append(f"for trace {payload['trace_id']!r}, not {trace_id!r}")
    if now < payload["issued_at"] - skew:
        verdict.problems.append(f"issued {payload['issued_at'] - now:.0f} s in the future (allowed skew {skew:g} s)")
    if now > payload["expires_at"]:
        verdict.problems.append(f"expired {now - payload['expires_at']:.0f} s ago")
    if payload["expires_at"] <= payload["issued_at"]:
        verdict.problems.append("expires_at is not after issued_at")
    done = applied(config.path)
    if payload["nonce"] in done["nonces"]:
        used = done["nonces"][payload["nonce"]]
        when = f" (applied to {used.get('trace_id')} at {used.get('applied_at')})" if isinstance(used, dict) else ""
        verdict.problems.append(f"nonce {payload['nonce']} was already used{when}: a replay")
    if payload["policy_version"] < done["policy_version"]:
        verdict.problems.append(
            f"policy_version {payload['policy_version']} is older than the last applied ({done['policy_version']})"
        )
    if payload["policy_version"] > config.rbac.policy_version:
        verdict.problems.append(
            f"policy_version {payload['policy_version']} is newer than policies/rbac.yaml ({config.rbac.policy_version})"
        )
    people: dict[str, str] = {}  # key fingerprint -> the person it counted for
    counted: set[str] = set()
    listed = {s.name: s for s in config.rbac.supervisors}
    message = override.payload.encode("utf-8")
    for entry in override.signatures:
        result = SignatureCheck(entry.principal, False, "")
        verdict.signatures.append(result)
        try:
            sig = verify(entry.sig, message, NAMESPACE)
        except SignatureError as exc:
            result.reason = str(exc)
            continue
        result.fingerprint, result.hash_algorithm = sig.public_key.fingerprint, sig.hash_algorithm
        supervisor = listed.get(entry.principal)
        if supervisor is None:
            result.reason = f"{entry.principal} is not a supervisor in policies/rbac.yaml"
            continue
        keys = set()
        for line in supervisor.keys:
            try:
                keys.add(parse_public_key(line).blob)
            except ValueError:
                continue
        if sig.public_key.blob not in keys:
            result.reason = f"key {result.fingerprint} is not listed for {entry.principal}"
            continue
        if not active(supervisor, now):
            result.reason = (
                f"{entry.principal} is not an active supervisor now (inactive or outside the validity window)"
            )
            continue
        owner = people.get(result.fingerprint)
        if owner is not None and owner != entry.principal:
            result.reason = f"key {result.fingerprint} already counted for {owner}: a key counts for one person"
            continue
        if entry.principal in counted:
            result.reason = f"{entry.principal} already counted: one person, one vote"
            continue
        people[result.fingerprint] = entry.principal
        counted.add(entry.principal)
        result.accepted, result.reason = True, "valid"
    verdict.have = len(counted)
    return verdict


def state_of(verdict: Verdict, applied_nonces: dict[str, Any], now: float, expires_at: int | None) -> str:
    """pending (payload fine, not enough signatures yet), valid, applied, expired or rejected."""
    if verdict.nonce is not None and verdict.nonce in applied_nonces:
        return "applied"
    if expires_at is not None and now > expires_at:
        return "expired"
    if verdict.problems:
        return "rejected"
    return "valid" if verdict.valid else "pending"
