"""The origin side of sync-majority WAL replication (SPEC §6.1).

A node's WAL writer hands every durable append to its :class:`Replicator` once the local fsync has
returned. The replicator ships the new bytes to each peer of the node's replica group (in parallel,
one stream per peer, as lz4 chunks) and returns when a majority — ⌊R/2⌋+1 of the group, the origin
counting as one — has acknowledged them with the right ``(token, crc)``. Fewer than that and the
append fails with :class:`QuorumError`: replication is CP, a write never quietly becomes local-only.
Before the local write the replicator also checks that a majority is *reachable* at all, so a refused
append usually leaves nothing behind.

A peer whose ack takes longer than ``write_timeout`` (``write_timeout_factor`` × the p95 of the
cluster's recent fsync acks, never below :data:`MIN_WRITE_TIMEOUT`) is demoted to LAGGING: it is no
longer waited for or counted, but still fed in the background. Demotion never leaves fewer healthy
members than the quorum, so the group stays a majority. A LAGGING peer that keeps up again (fast
acks, nothing outstanding) is promoted back. Each change is a *reconfiguration*: the node's
``replication`` control file gets a new epoch and a line of history, and an event is logged.

``permit_async`` names one peer that may acknowledge before its fsync (ack-only) until a deadline,
after which the replicator clears it (another reconfiguration).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import controlfile
from ..clock import wall_time
from ..errors import ControlFileMissing, HaiosError, QuorumError, TransportError
from ..node.replicas import REPLICATION_FILE
from ..transport.base import Exchange
from ..wal.format import SEGMENT_HEADER_SIZE, SegmentHeader, decode_segment_header
from ..wal.reader import list_segments, whole_records
from ..wal.writer import Upto
from .links import open_links
from .peer import Chunk
from .ring import Ring

log = logging.getLogger("haios.replication")

STATE_FILE = REPLICATION_FILE  # the node's replication control file
MIN_WRITE_TIMEOUT = 0.05  # seconds: scheduler noise is not a slow disk
MIN_SAMPLES = 8  # acks seen before anyone is judged slow
READMIT_AFTER = 8  # consecutive fast acks of a caught-up LAGGING peer before it counts again
HISTORY_KEPT = 50
MAX_CHUNK = 4 * 1024 * 1024  # raw bytes of one chunk (a record larger than that goes whole)
# how much of a segment the search for where a peer's copy ends holds at a time: every node process
# searches for each of its peers, many at once in a large reconcile (4 MiB windows took its peak RSS
# from ~130 to ~200 MiB at 200 nodes)
RESUME_WINDOW = 1024 * 1024


def _why(error: BaseException) -> str:
    if isinstance(error, HaiosError):
        return error.one_line()
    log.error("replication: unexpected %s", type(error).__name__, exc_info=error)
    return f"{type(error).__name__}: {error}"


@functools.lru_cache(maxsize=8)
def _ring(members: tuple[str, ...]) -> Ring:
    return Ring(members)  # building the ring is the expensive part: once per membership, not per origin


def _ring_peers(members: tuple[str, ...], origin: str, replicas: int) -> tuple[str, ...]:
    return _ring(members).peers(origin, replicas)


def quorum(size: int) -> int:
    """Acks needed in a group of ``size`` members (the origin included)."""
    return size // 2 + 1


@dataclass
class Settings:
    """The replication part of the node's policy."""

    mode: str = "off"
    replicas: int = 3
    write_timeout_factor: float = 2.0
    permit_async_for: float = 1800.0
    min_write_timeout: float = MIN_WRITE_TIMEOUT  # the floor under write_timeout: noise is not a slow disk
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: tuple[str, ...] = ()

    @property
    def on(self) -> bool:
        return self.mode == "sync-majority"

    @classmethod
    def for_node(cls, root: Path, policy: dict[str, Any], told: dict[str, Any] | None = None) -> Settings:
        """The node's settings: ``told`` (settings reconcile sends, not yet kept), else what reconcile
        last told it (``replication`` control file), else what its policy said when it was provisioned."""
        if told is None:
            told = read_state(root)[0].get("settings")
        if not told:
            return cls.from_policy(policy)
        return cls.from_policy(
            {**policy, "replication": told, "thresholds": {**(policy.get("thresholds") or {}), **told}}
        )

    @classmethod
    def from_policy(cls, policy: dict[str, Any]) -> Settings:
        section = policy.get("replication") or {}
        thresholds = policy.get("thresholds") or {}
        members = tuple(sorted(n for n, s in (policy.get("membership") or {}).items() if s == "active"))
        return cls(
            mode=str(section.get("mode", "off")),
            replicas=int(section.get("replicas", 3)),
            write_timeout_factor=float(thresholds.get("write_timeout_factor", 2.0)),
            permit_async_for=float(thresholds.get("permit_async_for", 1800.0)),
            peers=dict(section.get("peers") or {}),
            members=members,
        )


@dataclass
class _Position:
    """How far a peer holds the stream: segment, offset and the chain state there."""

    seq: int
    offset: int
    lamport: int
    crc: int


def _resume_at(segment: Path, size: object, sha256: object) -> tuple[int, int, int] | None:
    """(offset, Lamport index, CRC) at ``size`` bytes into our ``segment`` when those bytes end on a
    record boundary and hash to ``sha256``; None otherwise (ship from the segment's top)."""
    if not isinstance(size, int) or not isinstance(sha256, str) or size <= SEGMENT_HEADER_SIZE:
        return None
    try:
        if segment.stat().st_size < size:
            return None
        digest = hashlib.sha256()
        offset, lamport, crc = 0, 0, 0
        while offset < size:  # whole records, a bounded window at a time
            data, lamport, crc = whole_records(segment, offset, lamport, crc, end=size, limit=RESUME_WINDOW)
            if not data:
                return None
            digest.update(data)
            offset += len(data)
    except (OSError, ValueError):
        return None
    if offset != size or digest.hexdigest() != sha256:
        return None
    return offset, lamport, crc


def read_state(root: Path) -> tuple[dict[str, Any], int | None]:
    """The node's replication control file (it lists every peer: parsed once while it is unchanged)."""
    try:
        return controlfile.read_mapping_cached(root / STATE_FILE)
    except ControlFileMissing:
        return {}, None


class Replicator:
    """Ships one node's WAL to its replica group and counts the acknowledgements."""

    def __init__(
        self,
        node: str,
        root: Path,
        settings: Settings,
        *,
        links: dict[str, Exchange] | None = None,
        clock: Callable[[], float] = wall_time,
        link_timeout: float = 10.0,
    ) -> None:
        self.node = node
        self.root = root
        self.settings = settings
        self.clock = clock
        self.links = links if links is not None else open_links(node, settings.peers, base=root, timeout=link_timeout)
        self._acked: dict[str, _Position] = {}
        self._samples: deque[tuple[str, float]] = deque(maxlen=256)
        self._fast: dict[str, int] = {}
        self._busy: dict[str, Future[float]] = {}
        self._asked: dict[str, Upto] = {}  # where the peer's last shipment must bring it
        # a healthy peer's unfinished shipments: (when sent, the write_timeout then, the shipment)
        self._inflight: dict[str, deque[tuple[float, float, Future[float]]]] = {}
        self._down: dict[str, str] = {}  # peer -> why its last request failed
        self._lock = threading.Lock()
        self._state: tuple[tuple[int, ...] | None, dict[str, Any]] | None = None
        # one thread per peer: a peer's shipments run in order, and a stuck peer holds up no other
        self._pools = {
            p: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replicate-{node}-{p}") for p in self.links
        }
        self.bytes_shipped = 0  # raw WAL bytes written to peers by this replicator
        self.last_acks: dict[str, dict[str, Any]] = {}

    # -- the group -------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The node's ``replication`` control file, read again only when it changed on disk (every
        durable append asks several times)."""
        try:
            st = (self.root / STATE_FILE).stat()
            stamp: tuple[int, ...] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if self._state is None or self._state[0] != stamp:
            body, _ = read_state(self.root)
            self._state = (stamp, body)
        return self._state[1]

    def peers(self) -> list[str]:
        """The replica peers of this node: the placement reconcile pushed, else the ring's choice."""
        body = self.state()
        if body.get("group") is not None:
            return [p for p in body["group"] if p != self.node]
        members = self.settings.members or tuple(self.settings.peers) + (self.node,)
        return list(_ring_peers(tuple(sorted(set(members))), self.node, self.settings.replicas))

    def lagging(self) -> set[str]:
        return set((self.state().get("lagging") or {}).keys())

    def size(self) -> int:
        """R as this node sees it: itself and its peers."""
        return 1 + len(self.peers())

    def _async_peer(self, now: float) -> str | None:
        body = self.state()
        grant = body.get("permit_async")
        if not grant:
            return None
        if float(grant["until"]) <= now:
            self._reconfigure(f"permit-async for {grant['peer']} expired", permit_async=None)
            return None
        return str(grant["peer"])

    def write_timeout(self, judged: str) -> float:
        """``factor`` × p95 of the recent acks of everyone but ``judged`` (the origin's fsyncs included)."""
        others = sorted(s for p, s in self._samples if p != judged)
        if len(others) < MIN_SAMPLES:
            return float("inf")
        p95 = others[min(len(others) - 1, int(0.95 * len(others)))]
        return max(self.settings.min_write_timeout, self.settings.write_timeout_factor * p95)

    # -- reconfiguration -------------------------------------------------------------------------

    def _reconfigure(self, why: str, *, level: int = logging.WARNING, **changes: Any) -> None:
        body, version = read_state(self.root)
        body = {"node": self.node, "group": body.get("group"), "lagging": {}, "permit_async": None, **body}
        body.update(changes)
        body["epoch"] = int(body.get("epoch", 0)) + 1
        entry = {"epoch": body["epoch"], "at": round(self.clock(), 3), "why": why}
        body["history"] = [*(body.get("history") or []), entry][-HISTORY_KEPT:]
        controlfile.write_mapping(self.root / STATE_FILE, body, expected_version=version)
        self._state = None  # (inode, mtime, size) of a rewrite can equal the last one's: read it again
        log.log(level, "%s: replication reconfigured (epoch %d): %s", self.node, body["epoch"], why)

    def _demote(self, peer: str, elapsed: float, timeout: float) -> bool:
        healthy = [p for p in self.peers() if p not in self.lagging()]
        if 1 + len(healthy) - 1 < quorum(self.size()):
            return False  # demoting it would leave less than a majority: it stays, and is waited for
        lagging = {**(self.state().get("lagging") or {})}
        lagging[peer] = {"since": round(self.clock(), 3), "ack_s": round(elapsed, 6), "timeout_s": round(timeout, 6)}
        self._reconfigure(
            f"{peer} is LAGGING: ack took {elapsed * 1000:.1f} ms, write_timeout {timeout * 1000:.1f} ms; "
            f"quorum {quorum(self.size())} of {1 + len(healthy) - 1} healthy",
            lagging=lagging,
        )
        return True

    def _readmit(self, peer: str) -> None:
        lagging = {k: v for k, v in (self.state().get("lagging") or {}).items() if k != peer}
        self._reconfigure(f"{peer} keeps up again: back in the quorum", lagging=lagging)

    # -- shipping --------------------------------------------------------------------------------

    def _link(self, peer: str) -> Exchange:
        link = self.links.get(peer)
        if link is None:
            raise TransportError(f"{peer}: the policy names no way to reach this replica peer")
        return link

    def _start(self, peer: str, wal: Path) -> _Position:
        """Where to start shipping to a peer met for the first time: where its copy of its last
        segment ends when its bytes hash the same as ours there, else that segment's top (the peer
        compares what it holds with what it is sent, keeping aside bytes that disagree)."""
        answer = self._link(peer).request(
            {"op": "replica_status", "origin": self.node, "verify": False, "prefix": True}
        )
        held = {name for name, _size in answer.get("segments") or []}
        segments = list_segments(wal)
        start = segments[0] if segments else None
        for seg in segments:
            if seg.name in held:
                start = seg
        if start is None:
            return _Position(0, 0, 0, 0)
        prefix = answer.get("prefix")
        if isinstance(prefix, dict) and prefix.get("segment") == start.name:
            resumed = _resume_at(start.path, prefix.get("size"), prefix.get("sha256"))
            if resumed is not None:
                return _Position(start.seq, *resumed)
        return _Position(start.seq, 0, 0, 0)

    def _ship(self, peer: str, wal: Path, wal_id: int, upto: Upto, sync: bool) -> float:
        """Bring ``peer`` up to ``upto``; return how long its last ack took."""
        link = self._link(peer)
        pos = self._acked.get(peer) or self._start(peer, wal)
        elapsed = 0.0
        segments = {s.seq: s for s in list_segments(wal)}
        while (pos.seq, pos.offset) < (upto.seq, upto.offset):
            seg = segments.get(pos.seq)
            if seg is None:
                raise TransportError(f"{self.node}: segment {pos.seq} of the WAL is gone; cannot feed {peer}")
            if seg.seq == upto.seq:
                end, end_chain = upto.offset, (upto.lamport, upto.crc)
            else:
                end = seg.path.stat().st_size
                nxt = segments.get(seg.seq + 1)
                if nxt is None:
                    raise TransportError(f"{self.node}: segment {seg.seq + 1} of the WAL is gone; cannot feed {peer}")
                with open(nxt.path, "rb") as fh:  # its header only, not the whole segment
                    header: SegmentHeader = decode_segment_header(fh.read(SEGMENT_HEADER_SIZE))
                end_chain = (header.prev_lamport, header.prev_crc)
            if end <= pos.offset:
                pos = _Position(seg.seq + 1, 0, *end_chain)
                continue
            if end - pos.offset > MAX_CHUNK and pos.offset == 0:
                log.info("%s: sending %d bytes of %s to %s", self.node, end, seg.name, peer)
            # at most MAX_CHUNK bytes a request (a peer catching up takes a whole WAL in steps of
            # bounded memory), ending on a record boundary whose chain the peer checks
            data = b""
            if end - pos.offset > MAX_CHUNK:
                data, *chain = whole_records(seg.path, pos.offset, pos.lamport, pos.crc, end=end, limit=MAX_CHUNK)
                if data:
                    end, end_chain = pos.offset + len(data), (chain[0], chain[1])
            if not data:  # a span within the limit, or records that do not verify here (the peer says why)
                with open(seg.path, "rb") as fh:
                    fh.seek(pos.offset)
                    data = fh.read(end - pos.offset)
            chunk = Chunk(self.node, wal_id, seg.name, pos.offset, data, pos.lamport, pos.crc, *end_chain, sync=sync)
            sent = time.monotonic()
            answer = link.request(chunk.encode())
            elapsed = time.monotonic() - sent
            if not answer.get("ok"):
                pos = _Position(seg.seq, 0, 0, 0)  # the peer holds less: resend the segment from its top
                if int(answer.get("have", 0)) >= chunk.offset:
                    raise TransportError(f"{peer}: refused the chunk at {seg.name}+{chunk.offset}: {answer}")
                continue
            if (answer.get("token"), answer.get("crc")) != end_chain:
                raise TransportError(
                    f"{peer}: acknowledged {answer.get('token')}/{answer.get('crc')} for {seg.name}, "
                    f"expected {end_chain[0]}/{end_chain[1]}"
                )
            if answer.get("diverged"):
                log.warning(
                    "%s: %s held other bytes at %s+%d (the origin lost acknowledged records); kept there as %s",
                    self.node,
                    peer,
                    seg.name,
                    chunk.offset,
                    ", ".join(answer["diverged"]),
                )
            self.bytes_shipped += len(data)
            self.last_acks[peer] = answer
            pos = _Position(seg.seq, end, *end_chain)
            self._acked[peer] = pos
        return elapsed

    def ensure_quorum(self) -> None:
        """Before a durable append: refuse it when a majority of the group cannot be reached."""
        peers = self.peers()
        healthy = [p for p in peers if p not in self.lagging()]
        needed = quorum(1 + len(peers))
        if 1 + len(healthy) >= needed and not any(p in self._down for p in healthy):
            return
        reachable = 1
        for peer in healthy:
            if peer in self._down:
                try:
                    self._link(peer).request({"op": "replica_status", "origin": self.node, "verify": False})
                    self._down.pop(peer, None)
                except HaiosError as exc:
                    self._down[peer] = exc.one_line()
                    continue
            reachable += 1
        if reachable < needed:
            raise QuorumError(self._quorum_message(needed, reachable, healthy))

    def _quorum_message(self, needed: int, acked: int, healthy: list[str]) -> str:
        why = "; ".join(f"{p}: {self._down[p]}" for p in healthy if p in self._down)
        lagging = sorted(self.lagging())
        return (
            f"{self.node}: durable append refused: {acked} of {needed} acknowledgements needed from the replica group "
            f"{{{', '.join([self.node, *self.peers()])}}}"
            + (f" (LAGGING: {', '.join(lagging)})" if lagging else "")
            + (f"; {why}" if why else "")
        )

    def replicate(self, wal: Path, wal_id: int, upto: Upto, local_fsync_s: float) -> dict[str, Any]:
        """Wait until a majority of the group holds everything up to ``upto``; QuorumError otherwise.

        Returns as soon as the majority has acknowledged: the other peers' shipments go on, and how
        long they took is judged at the next append (a peer past its ``write_timeout`` is LAGGING).
        """
        now = self.clock()
        with self._lock:
            self._samples.append((self.node, local_fsync_s))
            peers = self.peers()
            self._judge_healthy(peers)
            for peer in self.lagging() & set(peers):
                self._judge_lagging(peer)  # how its previous shipment went
            lagging = self.lagging()
            async_peer = self._async_peer(now)
            needed = quorum(1 + len(peers))
            futures: dict[Future[float], str] = {}
            for peer in peers:
                running = self._busy.get(peer)
                if peer in lagging and running is not None and not running.done():
                    continue  # a LAGGING peer still catching up: it gets everything with its next shipment
                pool = self._pools.get(peer)
                if pool is None:
                    self._down[peer] = f"{peer}: the policy names no way to reach this replica peer"
                    continue
                future = pool.submit(self._ship, peer, wal, wal_id, upto, peer != async_peer)
                self._busy[peer] = future
                self._asked[peer] = upto
                if peer not in lagging:
                    self._inflight.setdefault(peer, deque()).append(
                        (time.monotonic(), self.write_timeout(peer), future)
                    )
                future.add_done_callback(functools.partial(self._collect, peer))
                futures[future] = peer
            healthy = [p for p in peers if p not in lagging]
            acked = 1
            pending = {f for f, p in futures.items() if p in healthy}
            while pending and acked < needed:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    error = future.exception()
                    if error is None:
                        acked += 1
                    else:
                        self._down[futures[future]] = _why(error)  # (its callback may not have run yet)
            if acked < needed:
                raise QuorumError(self._quorum_message(needed, acked, healthy))
            return {"acked": acked, "needed": needed, "group": [self.node, *peers]}

    def _collect(self, peer: str, future: Future[float]) -> None:
        """A shipment ended (in the peer's thread): remember how it went."""
        error = future.exception()
        if error is not None:
            self._down[peer] = _why(error)
            self._acked.pop(peer, None)  # ask where it stands next time
        elif error is None:
            self._down.pop(peer, None)
            if peer not in self.lagging():
                self._samples.append((peer, future.result()))

    def _judge_healthy(self, peers: list[str]) -> None:
        """Demote a healthy peer whose shipments took longer than the write_timeout they were sent with
        — finished late, or still unfinished that long after they were sent (a backlog counts)."""
        lagging = self.lagging()
        for peer in peers:
            queue = self._inflight.get(peer)
            if peer in lagging or not queue:
                continue
            slow: tuple[float, float] | None = None
            while queue and queue[0][2].done():
                sent, timeout, future = queue.popleft()
                if future.exception() is None and future.result() > timeout:
                    slow = (future.result(), timeout)
            if slow is None:
                # the unfinished ones, oldest first: the first ones may have been sent before there were
                # enough samples to judge by (no timeout), and must not hide the backlog behind them
                now = time.monotonic()
                slow = next(((now - sent, timeout) for sent, timeout, _ in queue if now - sent > timeout), None)
            if slow is not None and self._demote(peer, *slow):
                queue.clear()

    def _judge_lagging(self, peer: str) -> None:
        """Promote a LAGGING peer whose last shipments all finished, caught up, within write_timeout."""
        future = self._busy.get(peer)
        if future is None:
            return
        if not future.done() or future.exception() is not None:
            self._fast[peer] = 0
            return
        pos, asked = self._acked.get(peer), self._asked.get(peer)
        caught_up = pos is not None and asked is not None and (pos.seq, pos.offset) == (asked.seq, asked.offset)
        if not caught_up or future.result() > self.write_timeout(peer):
            self._fast[peer] = 0
            return
        self._fast[peer] = self._fast.get(peer, 0) + 1
        if self._fast[peer] >= READMIT_AFTER:
            self._fast[peer] = 0
            self._readmit(peer)

    def configure(self, settings: dict[str, Any]) -> None:
        """Take the replication settings reconcile sends (on or off, R, the peers' addresses, timings)."""
        self._reconfigure(f"settings: mode {settings.get('mode')}", level=logging.INFO, settings=settings)

    def place(self, peers: list[str], settings: dict[str, Any] | None = None) -> None:
        """Take the peers reconcile's placement gives this node (LAGGING marks of dropped peers go),
        and with ``settings`` the replication settings sent with them, in one reconfiguration."""
        lagging = {k: v for k, v in (self.state().get("lagging") or {}).items() if k in peers}
        grant = self.state().get("permit_async")
        if grant and grant["peer"] not in peers:
            grant = None
        why = f"placement: peers {', '.join(peers) or 'none'}"
        told: dict[str, Any] = {}
        if settings is not None:
            why, told = f"settings: mode {settings.get('mode')}; {why}", {"settings": settings}
        self._reconfigure(why, group=[self.node, *peers], lagging=lagging, permit_async=grant, **told)

    def permit_async(self, peer: str) -> dict[str, Any]:
        """Let ``peer`` acknowledge before its fsync for ``permit_async_for`` seconds."""
        until = self.clock() + self.settings.permit_async_for
        grant = {"peer": peer, "until": round(until, 3)}
        self._reconfigure(f"{peer} may acknowledge before its fsync until {time.ctime(until)}", permit_async=grant)
        return grant

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        for link in self.links.values():
            link.close()


def replicator_for(
    node: str, root: Path, policy: dict[str, Any], *, clock: Callable[[], float] = wall_time
) -> Replicator | None:
    """The replicator the node's settings ask for, or None when replication is off."""
    settings = Settings.for_node(root, policy)
    if not settings.on:
        return None
    return Replicator(node, root, settings, clock=clock)
