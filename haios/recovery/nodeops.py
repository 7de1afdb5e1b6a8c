"""Typed node operations over the transport: the one place a recovery request — and the fencing
token it carries — is built.

A :class:`NodeOps` is bound to one trace and the token of the lease its run holds; every write it
asks of a node carries that token, so a node that has seen a newer one refuses it (``FencedError``).
``inspect`` and ``state`` only read, and need no token. The node side of each operation is
:func:`haios.node.recover.handle`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import controlfile
from ..transport.base import Transport


def inspect(transport: Transport, node: str, g: int, phase: str, *, from_lamport: int | None = None) -> dict[str, Any]:
    """What ``node`` holds of (g, phase): status, side effects, RECOVERY records (read only).
    ``from_lamport``: where an attempt that already ended begins in the WAL."""
    request: dict[str, Any] = {"op": "inspect", "g": g, "phase": phase}
    if from_lamport is not None:
        request["from_lamport"] = from_lamport
    return transport.call(node, request)


def committed(
    transport: Transport, node: str, after: tuple[int, str | None], until: tuple[int, str | None]
) -> list[dict[str, Any]]:
    """The transitions ``node`` committed after position ``after`` up to ``until``, each with the
    intents it logged (read only): what a rejoining peer catches up from."""
    answer = transport.call(node, {"op": "committed", "after": list(after), "until": list(until)})
    transitions = answer.get("transitions")
    return [t for t in transitions if isinstance(t, dict)] if isinstance(transitions, list) else []


def node_state(transport: Transport, node: str) -> dict[str, Any] | None:
    """The node's state.txt as it is now, read through the transport (None: it has none)."""
    raw = transport.read_file(node, "state.txt")
    return controlfile.load_mapping(controlfile.decode(raw, node)) if raw is not None else None


def restore_wal(transport: Transport, node: str) -> dict[str, Any]:
    """Rebuild the node's lost or corrupt WAL from the copies its replica peers hold."""
    return transport.call(node, {"op": "restore_wal"})


def push_policy(transport: Transport, node: str, *, token: int, policy: dict[str, Any]) -> dict[str, Any]:
    """Make ``policy`` the node's policy file, fenced with ``token`` (a lease on the policy shard)."""
    return transport.call(node, {"op": "policy", "token": token, "policy": policy})


@dataclass(frozen=True)
class NodeOps:
    """The recovery operations of one trace, fenced with ``token``."""

    transport: Transport
    trace_id: str
    g: int
    phase: str
    token: int

    def _call(self, node: str, op: str, **extra: Any) -> dict[str, Any]:
        request = {"op": op, "trace_id": self.trace_id, "token": self.token, "g": self.g, "phase": self.phase}
        return self.transport.call(node, {**request, **extra})

    def repair(self, node: str) -> dict[str, Any]:
        """Cut the node's torn WAL tail (kept aside as ``.broken``)."""
        return self._call(node, "repair")

    def forward(self, node: str) -> dict[str, Any]:
        """Replay the phase's intents idempotently and write COMMIT_PHASE."""
        return self._call(node, "forward")

    def settle(self, node: str, *, force: bool) -> dict[str, Any]:
        """Bring state.txt up to the end record the WAL holds (``force``: an older state.txt, a human agreed)."""
        return self._call(node, "settle", force=force)

    def rollback(self, node: str, *, reason: str, abandon: list[str] | None = None) -> dict[str, Any]:
        """Restore data/ from the BEGIN snapshot and write ABORT_PHASE (``abandon``: side effects
        left uncompensated, named in the record)."""
        extra = {"abandon": list(abandon)} if abandon else {}
        return self._call(node, "rollback", reason=reason, **extra)

    def compensated(self, node: str, *, key: str, result: Any, from_lamport: int | None) -> dict[str, Any]:
        """Record on the node that the side effect ``key`` was compensated, with the compensator's result."""
        return self._call(node, "compensated", key=key, result=result, from_lamport=from_lamport)

    def catchup(self, node: str, *, note: str, source: dict[str, Any]) -> dict[str, Any]:
        """Commit (g, phase) on a node that missed it with the intents ``source`` (a peer's committed
        transition) logged, verified there against their hashes, and a STEP naming the peer."""
        return self._call(node, "catchup", note=note, source=source)

    def resume_command(self, node: str) -> dict[str, Any]:
        """Run the open phase's resumable command again after its last STEP, in the stage its killed
        run left; ``outcome`` prepared, not resumable or failed (the node then says so in its WAL)."""
        return self._call(node, "resume")

    def checkpoint(self, node: str, *, step: str, outcome: Any) -> dict[str, Any]:
        """A RECOVERY record of a step that changes nothing in data/ (a resume hook, an override's nonce)."""
        return self._call(node, "checkpoint", step=step, outcome=outcome)
