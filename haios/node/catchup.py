"""What a rejoining node catches up from a peer: the committed transitions in its WAL, with their
intents, and the checks a copy of them must pass before it is applied anywhere.

A peer answers :func:`committed_transitions` (the ``committed`` recovery operation, read only): for
every transition it committed in a range of positions, the INTENTs that transition logged — each
file's bytes, their SHA-256, and the PREPARE digest over all of them. A transition the peer itself
committed by an older catch-up, which logged no intents, is marked ``without_data``: it cannot
serve as a source. :func:`verify_transition` is run twice: by the reconciler to choose a source
peer, and by the rejoining node before it logs and applies what it was sent (it trusts no
transport). Payloads are untrusted: every field is checked for its type before it is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config.model import phase_order
from .transaction import intents_digest, scan_phases

CATCH_UP_STEP = "catch-up"  # the STEP a catch-up commit logs: its source, or (older) a sentence


def committed_transitions(
    root: Path, after: tuple[int, str | None], until: tuple[int, str | None]
) -> list[dict[str, Any]]:
    """The transitions this node committed after position ``after`` up to ``until`` (both (g, phase)),
    in order, each with the INTENTs it logged and its PREPARE digest."""
    low, high = phase_order(*after), phase_order(*until)
    out: list[dict[str, Any]] = []
    for log in scan_phases(root).values():
        if log.ended != "COMMIT_PHASE" or not low < phase_order(log.g, log.phase) <= high:
            continue
        step = log.steps.get(CATCH_UP_STEP)
        out.append(
            {
                "g": log.g,
                "phase": log.phase,
                "trace_id": log.trace_id,
                "digest": log.prepared,
                "intents": [
                    {k: i.get(k) for k in ("seq", "op", "path", "expected_version", "sha256", "content_b64")}
                    for i in log.intents
                ],
                # a catch-up of an older haios logged a sentence and no intents: it holds no data to pass on
                "without_data": step is not None and not isinstance(step, Mapping),
            }
        )
    return sorted(out, key=lambda t: phase_order(t["g"], t["phase"]))


def _intent_problem(intent: Any) -> str | None:
    if not isinstance(intent, Mapping):
        return "an intent is not a mapping"
    path = intent.get("path")
    if not isinstance(path, str) or not path:
        return "an intent has no path"
    if intent.get("op") == "delete":
        return None if intent.get("sha256") is None else f"data/{path}: a delete carries a hash"
    if intent.get("op") != "write":
        return f"data/{path}: unknown operation {str(intent.get('op'))[:20]!r}"
    content, sha = intent.get("content_b64"), intent.get("sha256")
    if not isinstance(content, str) or not isinstance(sha, str):
        return f"data/{path}: the content or its hash is missing"
    try:
        raw = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        return f"data/{path}: the content is not base64"
    if hashlib.sha256(raw).hexdigest() != sha:
        return f"data/{path}: the bytes do not hash to the intent's sha256 {sha[:12]}"
    return None


def verify_transition(transition: Any, g: int, phase: str) -> str | None:
    """Why ``transition`` (one item of :func:`committed_transitions`) cannot be the source of (g,
    phase) on another node; None when every file's bytes match its hash and the intents match the
    PREPARE digest the source logged."""
    if not isinstance(transition, Mapping) or (transition.get("g"), transition.get("phase")) != (g, phase):
        return f"its answer is not g={g} {phase}"
    if transition.get("without_data"):
        return "it committed the transition by a catch-up that carried no data (an older haios)"
    intents = transition.get("intents")
    if not isinstance(intents, list):
        return "its answer has no list of intents"
    for intent in intents:
        problem = _intent_problem(intent)
        if problem is not None:
            return problem
    if len({i["path"] for i in intents}) != len(intents):
        return "two intents name one file"
    if intents_digest(intents) != transition.get("digest"):
        return "the intents do not match the PREPARE digest it logged"
    return None


def source_step(source: Mapping[str, Any], note: str) -> dict[str, Any]:
    """What a catch-up commit's STEP records: why, from which peer and which of its traces."""
    return {
        "note": note,
        "from": str(source.get("node")),
        "trace_id": str(source.get("trace_id")),
        "digest": str(source.get("digest")),
        "files": len(source.get("intents") or []),
    }


def decoded(intent: Mapping[str, Any]) -> bytes | None:
    """A verified intent's bytes (None: it deletes the file)."""
    return None if intent.get("op") == "delete" else base64.b64decode(str(intent["content_b64"]))
