"""The shape of each control file of a node root, checked before anything reads a field of it.

The integrity footer proves a file is whole, not that haios wrote it: anyone who can write a node
root can compute a SHA-256. So a body is checked here for the fields and types the readers rely
on (a ``g`` that is an integer, a ``wall_time`` that is a UTC time), and a file that fails is one
finding about that file, never a ``KeyError`` or ``TypeError`` deeper in a detector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.model import PHASES
from ..timefmt import parse_utc


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _str(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 4096


def _utc(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_utc(value)
    except ValueError:
        return False
    return True


def _phase(value: Any) -> bool:
    return value in PHASES


def _ints(value: Any) -> bool:
    return isinstance(value, dict) and all(_str(k) and _int(v) for k, v in value.items())


def _peers(value: Any) -> bool:
    return isinstance(value, dict) and all(_str(k) and (v is None or _utc(v)) for k, v in value.items())


Check = Callable[[Any], bool]

# file -> field -> (required, check, what it must be)
SHAPES: dict[str, dict[str, tuple[bool, Check, str]]] = {
    "state.txt": {
        "node": (True, _str, "a node name"),
        "g": (True, _int, "a non-negative integer"),
        "ph": (True, lambda v: v is None or _phase(v), "a phase name (or null: nothing committed yet)"),
        "status": (False, _str, "a string"),
        "vc": (False, _ints, "a mapping of names to integers"),
        "wal_cursor": (
            False,
            lambda v: v is None or (_ints(v) and set(v) == {"seq", "offset", "lamport", "crc"}),
            "a mapping of seq, offset, lamport and crc to integers",
        ),
    },
    "heartbeat": {
        "wall_time": (True, _utc, "a UTC time (YYYY-MM-DDTHH:MM:SS.mmmZ)"),
        "seq": (False, _int, "a non-negative integer"),
        "haios_version": (False, _str, "a string"),
    },
    "gossip": {
        "peers": (False, lambda v: v is None or _peers(v), "a mapping of peers to UTC times or null"),
        "partition_status": (False, _str, "a string"),
        "updated_at": (False, _utc, "a UTC time (YYYY-MM-DDTHH:MM:SS.mmmZ)"),
    },
    "exec_status": {
        "g": (True, _int, "a non-negative integer"),
        "phase": (False, _phase, "a phase name"),
        "status": (False, _str, "a string"),
    },
}


def problem(kind: str, body: dict[str, Any]) -> str | None:
    """Why ``body`` is not a ``kind`` file haios wrote (the first field that is wrong), or None."""
    for key, (required, check, what) in SHAPES[kind].items():
        if key not in body:
            if required:
                return f"has no {key}"
            continue
        if not check(body[key]):
            return f"{key} is not {what}"
    return None


def problem_for(kind: str, body: dict[str, Any], node: str) -> str | None:
    """:func:`problem`, and for the files that name their node (``state.txt``, ``heartbeat``) one that
    names another: what an observation pass will not take as ``node``'s."""
    wrong = problem(kind, body)
    if wrong is None and kind in ("state.txt", "heartbeat") and body.get("node", node) != node:
        wrong = f"belongs to node {str(body['node'])[:64]!r}, not {node} (copied from another node root?)"
    return wrong
