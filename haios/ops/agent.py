"""``haios agent ROOT``: the node's own daemon — its heartbeat, and gossip with its peers over the network.

Every ``heartbeat.interval`` the agent writes the next heartbeat, then talks to a few members chosen at
random (:data:`FANOUT`, whatever the cluster's size) through the transport each is reached by — over
SSH one conversation per peer, kept open across rounds, with ``haios node gossip-serve`` answering at
the other end — and merges what they know (:mod:`haios.node.gossip`), deciding its own partition
status. What it needs it reads from the node's ``policy`` file each round (membership, how to reach
each member, the thresholds), so a pushed desired state takes effect at the next round.

One agent per node root: it holds the lock ``agent.lock`` in the root while it runs (``--check`` asks
whether someone does). SIGTERM or SIGINT ends it between rounds; it logs one line per event to stderr.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import controlfile
from ..config.model import NodeSpec
from ..errors import HaiosError, LockHeldError, TransportError, UsageError
from ..node import gossip
from ..node.heartbeat import beat
from ..timefmt import parse_utc
from ..transport import ClusterTransport, transport_for
from ..transport.base import Exchange

FANOUT = 3  # peers contacted per round
LOCK_NAME = "agent.lock"
SERVE = ["node", "gossip-serve"]  # the peer's end: haios --output json node gossip-serve ROOT
DEFAULT_INTERVAL = 15.0
DEFAULT_WINDOW = 45.0

Log = Callable[[str], None]


@dataclass
class Settings:
    """What the agent reads from the node's policy file."""

    node: str
    members: list[str]  # the active members: whose silence counts towards a partition
    peers: dict[str, dict[str, Any]]  # how to reach each node, by name
    interval: float
    window: float

    @classmethod
    def read(cls, root: Path) -> Settings:
        state, _ = controlfile.read_mapping_cached(root / "state.txt")
        policy, _ = controlfile.read_mapping_cached(root / "policy")
        thresholds = gossip.mapping_at(policy, "thresholds")
        interval, window = thresholds.get("heartbeat_interval"), thresholds.get("partition_window")
        return cls(
            str(state.get("node")),
            gossip.active_members(policy),
            {k: v for k, v in gossip.mapping_at(policy, "peers").items() if isinstance(v, dict)},
            float(interval) if isinstance(interval, int | float) and interval > 0 else DEFAULT_INTERVAL,
            float(window) if isinstance(window, int | float) and window > 0 else DEFAULT_WINDOW,
        )


def _spec(name: str, peer: dict[str, Any]) -> NodeSpec:
    return NodeSpec(
        name=name,
        transport=str(peer.get("transport", "local")),
        root=str(peer.get("root")),
        address=peer.get("address"),
        port=int(peer.get("port", 22)),
        user=str(peer.get("user", "haios")),
        host_key=peer.get("host_key"),
    )


@dataclass
class Agent:
    """One node's heartbeat and gossip, a round at a time (:meth:`round`)."""

    root: Path
    log: Log
    clock: Callable[[], float]
    rng: random.Random = field(default_factory=random.Random)
    exchanges: dict[str, Exchange] = field(default_factory=dict)
    # how to start a conversation with a peer (default: the transport its entry in the policy names)
    connect: Callable[[str], Exchange] | None = None
    _transport: ClusterTransport | None = None
    _peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    _silent: set[str] = field(default_factory=set)  # peers whose last request failed (logged once)
    _status: str | None = None
    _pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2 * FANOUT, thread_name_prefix="gossip")
    )

    def _exchange(self, settings: Settings, peer: str) -> Exchange:
        if settings.peers != self._peers:  # a pushed policy changed how peers are reached: start afresh
            self.close()
            self._peers = settings.peers
        if peer not in self.exchanges and self.connect is not None:
            self.exchanges[peer] = self.connect(peer)
        if peer not in self.exchanges:
            if peer not in settings.peers:
                raise UsageError(
                    f"{peer}: the node's policy does not say how to reach it (a local node is beaten from its "
                    "repo: 'haios node heartbeat')"
                )
            if self._transport is None:
                specs = [_spec(n, p) for n, p in sorted(settings.peers.items()) if n != settings.node]
                mirror = self.root / "replicas" / ".mirror"  # (a conversation copies nothing there)
                self._transport = transport_for(
                    specs, base=self.root, mirror=mirror, connect_timeout=_connect(settings)
                )
            self.exchanges[peer] = self._transport.exchange(
                peer, command=SERVE, handler=gossip.serve, timeout=_answer(settings)
            )
        return self.exchanges[peer]

    def round(self) -> dict[str, Any]:
        """Beat, gossip with up to FANOUT peers, decide the partition status; returns the gossip file."""
        settings = Settings.read(self.root)
        node, now = settings.node, self.clock()
        beat(self.root, node, now)
        others = [m for m in settings.members if m != node]
        chosen = self.rng.sample(others, min(FANOUT, len(others)))
        mine = gossip.view(self.root, node)
        heard: dict[str, int] = {}
        exchanges = {}
        for peer in chosen:  # opened here, one at a time; asked at once, each within its own timeout
            try:
                exchanges[peer] = self._exchange(settings, peer)
            except HaiosError as exc:
                self._failed(node, peer, exc)
        request = {"op": "gossip", "from": node, "view": mine}
        asked = {self._pool.submit(_ask, exchange, request): peer for peer, exchange in exchanges.items()}
        budget = _budget(settings)
        try:
            for done in as_completed(asked, timeout=budget):
                peer = asked[done]
                try:
                    theirs = done.result()
                except HaiosError as exc:
                    self._failed(node, peer, exc)
                    continue
                if peer in self._silent:
                    self._silent.discard(peer)
                    self.log(f"{node}: reached {peer} again")
                for name, seq in theirs.items():
                    heard[name] = max(seq, heard.get(name, -1))
        except FutureTimeout:  # the round ends on time: the gossip file is rewritten every interval
            for future, peer in asked.items():
                if not future.done():
                    self._failed(node, peer, TransportError(f"{peer}: no answer within this round's {budget:g} s"))
        body = gossip.learn(self.root, node, settings.members, heard, self.clock(), window=settings.window)
        if body["partition_status"] != self._status:
            quiet = [p for p, when in body["peers"].items() if when is None or now - parse_utc(when) > settings.window]
            self.log(
                f"{node}: {body['partition_status']}"
                + (
                    f" ({len(quiet)} of {len(body['peers'])} peers silent for more than {settings.window:g} s)"
                    if quiet
                    else ""
                )
            )
            self._status = body["partition_status"]
        return body

    def _failed(self, node: str, peer: str, exc: HaiosError) -> None:
        """A peer that did not answer: its conversation ends (the next round starts a new one), and
        it is said once, not every round."""
        self._drop(peer)
        if peer not in self._silent:
            self._silent.add(peer)
            self.log(f"{node}: cannot reach {peer}: {exc.message}")

    def _drop(self, peer: str) -> None:
        exchange = self.exchanges.pop(peer, None)
        if exchange is not None:
            exchange.close()

    def close(self) -> None:
        for peer in list(self.exchanges):
            self._drop(peer)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def shutdown(self) -> None:
        """Everything closed, the threads that ask peers too (the agent is done)."""
        self.close()
        self._pool.shutdown(wait=True)

    def run(self, stop: threading.Event, *, once: bool = False) -> int:
        """Rounds every interval until ``stop`` is set (``once``: one round); returns the rounds run."""
        rounds = 0
        try:
            while not stop.is_set():
                started = self.clock()
                interval = DEFAULT_INTERVAL
                try:
                    interval = Settings.read(self.root).interval
                    self.round()
                except HaiosError as exc:  # a damaged control file, a full disk: said, and the next round tries
                    self.log(f"{self.root}: round failed: {exc.message}")
                rounds += 1
                if once:
                    break
                stop.wait(max(0.0, interval - (self.clock() - started)))
        finally:
            self.shutdown()
        return rounds


def _connect(settings: Settings) -> float:
    """How long a peer may take to accept a connection (peers are asked at once, so a round waits
    for the slowest: it stays well within the interval)."""
    return max(2.0, settings.interval / 4)


def _budget(settings: Settings) -> float:
    """How long a round waits for its peers' answers: within the interval, so that the node's gossip
    file is rewritten at least once per interval however slow its peers (a file older than the
    heartbeat window would be no verdict). A peer that misses it is asked again next round."""
    return max(1.0, 0.8 * settings.interval)


def _answer(settings: Settings) -> float:
    """How long a peer may take to answer; the first answer of a session includes starting the
    server on the peer (a Python interpreter), so it is never under 5 s."""
    return max(5.0, settings.interval * 0.6)


def _ask(exchange: Exchange, request: dict[str, Any]) -> dict[str, int]:
    return gossip.checked_view(exchange.request(request).get("view"))


@contextmanager
def agent_lock(root: Path) -> Iterator[None]:
    """Hold ``ROOT/agent.lock`` for as long as the agent runs (its pid inside); LockHeldError when
    another agent holds it."""
    if not (root / "state.txt").exists():
        raise UsageError(f"{root}: not a node root (no state.txt)")
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(
                f"{root}: an agent is already running for this node root (pid {running(root) or '?'})",
                hint="stop it first (systemctl stop haios-agent@…, or kill PID)",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def running(root: Path) -> int | None:
    """The pid of the agent running for ``root``, or None when none holds its lock."""
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        return None
    finally:
        os.close(fd)
