"""Gossip (SPEC §2.5): how a node learns every member's liveness by talking to a few of them per round.

Each round a node's agent sends a handful of peers, chosen at random, its *view*: the highest heartbeat
sequence number it knows of every member, its own included; each answers with its own view. A member
counts as heard only on fresh evidence — a sequence number higher than any this node knew — whether it
came from the member itself or relayed by another, and it is heard *when this node learned it*, by this
node's clock (so no two clocks are ever compared). A member that stopped beating stops raising its
number and falls silent everywhere, whoever relays; a node cut off from a majority hears nothing new of
it and marks itself PARTITIONED once a majority of its peers has been silent for the partition window.

Both ends keep what they learn in the node's ``gossip`` control file (``seqs``: the highest number known
per peer; ``peers``: when it last rose). Only the node's own agent decides the partition status and
stamps ``updated_at``: when the agent stops, the file goes stale, and a stale file decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import controlfile
from ..config.model import NAME_RE
from ..errors import ControlFileError, UsageError, VersionConflict
from ..timefmt import parse_utc, utc

MAX_VIEW = 10_000  # members in one view: a request naming more is refused, not parsed further


def active_members(policy: Mapping[str, Any]) -> list[str]:
    """The members a node's policy lists as active: whose silence counts towards a partition."""
    return sorted(name for name, status in mapping_at(policy, "membership").items() if status == "active")


def partition_status(peers: Mapping[str, str | None], now: float, window: float) -> str:
    """PARTITIONED when more than half of ``peers`` have been silent for longer than ``window``."""
    silent = sum(1 for heard in peers.values() if heard is None or now - parse_utc(heard) > window)
    return "PARTITIONED" if peers and silent * 2 > len(peers) else "NORMAL"


def own_seq(root: Path) -> int:
    """The node's own heartbeat sequence number (0 before its first beat)."""
    path = root / "heartbeat"
    if controlfile.current_version(path) is None:
        return 0
    seq = controlfile.read_mapping(path)[0].get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else 0


def _read(root: Path) -> tuple[dict[str, Any], int | None]:
    path = root / "gossip"
    version = controlfile.current_version(path)
    return (controlfile.read_mapping(path)[0] if version is not None else {}), version


def mapping_at(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``body[key]`` when it is a mapping (keys as strings), else an empty one: a file's field as data."""
    value = body.get(key)
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def view(root: Path, node: str) -> dict[str, int]:
    """What this node knows: its own sequence number and the highest it heard of every peer."""
    body, _ = _read(root)
    seqs = mapping_at(body, "seqs")
    known = {k: v for k, v in seqs.items() if isinstance(v, int) and not isinstance(v, bool)}
    return {**known, node: own_seq(root)}


def checked_view(value: object) -> dict[str, int]:
    """A view that came over the wire: member names to non-negative integers, or UsageError."""
    if not isinstance(value, dict) or len(value) > MAX_VIEW:
        raise UsageError(f"a gossip view must be a mapping of at most {MAX_VIEW} members to sequence numbers")
    out = {}
    for name, seq in value.items():
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise UsageError(f"a gossip view names {str(name)[:64]!r}, which is no node name")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise UsageError(f"a gossip view gives {name} the sequence number {str(seq)[:32]!r}")
        out[name] = seq
    return out


def _utc_or_none(value: object) -> str | None:
    """A time the file names, or None when it names none this haios would write (a hostile file's
    entry is silence, never a crash)."""
    if not isinstance(value, str):
        return None
    try:
        parse_utc(value)
    except ValueError:
        return None
    return value


def learn(
    root: Path,
    node: str,
    members: Iterable[str],
    heard: Mapping[str, int],
    now: float,
    *,
    window: float | None = None,
    attempts: int = 20,
) -> dict[str, Any]:
    """Merge the views ``heard`` into the node's gossip file: a member whose number rose was heard now.
    With ``window`` (the node's own agent, at the end of its round) also decide the partition status
    and stamp ``updated_at``. Returns the file's body."""
    peers = sorted(set(members) - {node})
    for _ in range(attempts):
        body, version = _read(root)
        old_seqs, old_heard = mapping_at(body, "seqs"), mapping_at(body, "peers")
        seqs: dict[str, int] = {}
        when: dict[str, str | None] = {}
        for peer in peers:
            known = old_seqs.get(peer)
            known = known if isinstance(known, int) and not isinstance(known, bool) else -1
            last = _utc_or_none(old_heard.get(peer))
            if heard.get(peer, -1) > known:
                known, last = heard[peer], utc(now)  # fresh evidence, direct or relayed
            if known >= 0:
                seqs[peer] = known
            when[peer] = last
        new = {
            "node": node,
            "peers": when,
            "seqs": seqs,
            "partition_status": body.get("partition_status", "NORMAL"),
            "since": body.get("since") or utc(now),
            "updated_at": body.get("updated_at") or utc(now),
        }
        if window is not None:
            status = partition_status(when, now, window)
            if status != body.get("partition_status"):
                new["since"] = utc(now)
            new.update(partition_status=status, updated_at=utc(now))
        if new == body:
            return body
        try:
            controlfile.write_mapping(root / "gossip", new, expected_version=version)
            return new
        except VersionConflict:
            continue  # the node's agent or a peer's request wrote meanwhile: merge again
    raise ControlFileError(root / "gossip", "too many concurrent writers; the next round tries again")


def serve(root: Path, request: dict[str, Any]) -> dict[str, Any]:
    """:func:`handle` at this moment (the handler ``haios node gossip-serve`` and a local peer run)."""
    return handle(root, request, time.time())


def handle(root: Path, request: dict[str, Any], now: float) -> dict[str, Any]:
    """A peer's gossip request, on this node: learn its view, answer with this node's.
    ``{"op": "gossip", "from": NAME, "view": {NAME: SEQ, ...}}``."""
    if request.get("op") != "gossip":
        raise UsageError(f"unknown gossip operation {str(request.get('op'))[:64]!r} (known: gossip)")
    incoming = checked_view(request.get("view"))
    state, _ = controlfile.read_mapping_cached(root / "state.txt")
    node = str(state.get("node"))
    policy, _ = controlfile.read_mapping_cached(root / "policy")
    members = [str(m) for m in (policy.get("membership") or {})]
    if request.get("from") not in members:
        raise UsageError(
            f"{root}: gossip from {str(request.get('from'))[:64]!r}, which is not a member of {node}'s cluster"
        )
    learn(root, node, members, incoming, now)
    return {"node": node, "view": view(root, node)}
