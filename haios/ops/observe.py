"""Observation gathering: what each node's root says now, reading its WAL incrementally.

Per node, the pass reads ``state.txt``, the ``exec_status_<g>.txt`` of the iteration it is at and of
the next (what the SSH transport mirrors of them), ``heartbeat``, ``gossip`` and ``fence`` (each
verified), and the WAL **from where the previous pass stopped** — the cursor and the summaries it
built are kept in ``status/observed/<node>.json`` — so a second pass reads only new bytes. If the
WAL no longer continues from the saved cursor (it was repaired or replaced), the node is read again
from the start. A first pass starts from the summary the node's WAL writer keeps of its own WAL
(:func:`haios.wal.summary.adopt`) when the bytes it speaks of still have the CRC-32s it names. Nodes are observed in parallel (bounded), each within a timeout; a node that cannot be read
is an observation (``reachable: False``), never a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from .. import controlfile
from ..config.model import RepoConfig
from ..detect.detectors import NodeObservation, PhaseSummary
from ..errors import EXIT_VERIFICATION, HaiosError
from ..fsutil import atomic_write, makedirs_durable
from ..layout import OBSERVED_DIR
from ..node import shapes
from ..procutil import worker_initializer
from ..transport import Transport, open_transport
from ..untrusted import read_json
from ..wal import Cursor, summary
from ..wal.phases import PhaseLog
from ..wal.reader import list_segments
from ..wal.writer import LOCK_NAME

CACHE_DIR = OBSERVED_DIR

# the first key of a policy, in block style or in the JSON style of a large body
_DIGEST_LINE = re.compile(rb"""digest: ['"]?([0-9a-f]{64})['"]?(?:\n|$)|\{\n"digest": "([0-9a-f]{64})",?\n""")


def policy_digest_line(body: bytes) -> str | None:
    """The digest a verified ``policy`` body names first (compile_policy puts it there: the first
    line, or the first item of a body in JSON style), without parsing the rest; None for a policy
    without one (pushed by an older haios)."""
    match = _DIGEST_LINE.match(body)
    return (match.group(1) or match.group(2)).decode() if match else None


def _cache_path(repo: Path, node: str) -> Path:
    return repo / CACHE_DIR / f"{node}.json"


def _load_cache(repo: Path, node: str) -> dict[str, Any] | None:
    """The node's cached summary, or None when there is none or it is not one this haios wrote (a
    cache that does not parse, or has the wrong shape, is dropped: the pass reads the WAL whole)."""
    try:
        data = read_json(_cache_path(repo, node), "status", within=repo / CACHE_DIR)
    except HaiosError:
        return None
    return summary.check(data)


def _summary(log: PhaseLog) -> PhaseSummary:
    return PhaseSummary(
        log.g,
        log.phase,
        log.trace_id,
        tuple(log.participants),
        log.begin_ts,
        log.begin_lamport,
        prepared=log.prepared is not None,
        ended=log.ended,
        end_ts=log.end_ts,
        end_lamport=log.end_lamport,
        effects=tuple(log.side_effects),
        compensated=tuple(log.compensated),
        abandoned=tuple(log.abandoned),
        last_ts=log.last_ts,
    )


def _summaries_from(data: list[dict[str, Any]]) -> dict[tuple[int, str], PhaseSummary]:
    return {log.key: _summary(log) for log in summary.kept_logs(data)}  # built by this pass


def cached_override_nonces(repo: Path, node: str) -> list[str]:
    """The nonces of the signed overrides the node's WAL says were applied, as the last pass saw
    them (none without a cache)."""
    return list((_load_cache(repo, node) or {}).get("override_nonces") or [])


def writer_active(wal: Path) -> bool:
    """Whether a process holds the WAL's writer lock right now."""
    try:
        fd = os.open(wal / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases a lock taken just now
    return False


def _read_wal(root: Path, cache: dict[str, Any] | None) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """Fold the WAL's new records into the cached summary — without one, into the node's own summary
    of its WAL when that still checks out, else every record; returns (cache, bytes read, corruption)."""
    wal = root / "wal"
    # A short record at the very end is an append in progress only while a writer holds the lock;
    # otherwise it is a torn tail and must be reported.
    return summary.fold_wal(wal, cache or summary.adopt(wal), partial_ok=writer_active(wal))


def _not_torn_if_read_before(corruption: dict[str, Any] | None, cache: dict[str, Any] | None) -> dict[str, Any] | None:
    """A bad record that an earlier pass read whole (before its cursor) cannot be a torn write,
    whatever its position now: it changed since, which is mid-log corruption."""
    mark = (cache or {}).get("verified_to")
    if corruption is None or not corruption["torn_tail"] or not mark:
        return corruption
    at = (int(str(corruption["segment"])[:16], 16), int(corruption["offset"]))
    if at >= tuple(mark):
        return corruption
    reason = f"{corruption['reason']}; an earlier pass read this record whole, so it changed since"
    return {**corruption, "torn_tail": False, "reason": reason}


def _verified_to(wal: Path, cache: dict[str, Any] | None, state: dict[str, Any]) -> list[int] | None:
    """How far the WAL has been read whole, over every pass: the furthest cursor that still lies
    inside the WAL (a repair or restore that cut it below that starts the mark afresh)."""
    marks = [m for m in ((cache or {}).get("verified_to"), (cache or {}).get("cursor"), state.get("cursor")) if m]
    sizes = {seg.seq: seg.path.stat().st_size for seg in list_segments(wal)}
    inside = []
    for m in marks:
        seq, offset = (m[0], m[1]) if isinstance(m, list) else (m["seq"], m["offset"])
        if sizes.get(seq, -1) >= offset:
            inside.append([seq, offset])
    return max(inside) if inside else None


_LOAD: Any = object()  # observe_node's ``cache``: load it there


def observe_node(
    repo: Path, node: str, root: Path, cache: dict[str, Any] | None = _LOAD
) -> tuple[NodeObservation, dict[str, list[float]]]:
    """One node, incrementally; returns the observation and its completed durations per phase.
    ``cache``: the node's cache as the caller loaded it (:func:`_load_cache`), when it did."""
    obs = NodeObservation(node)
    if not (root / "state.txt").exists():
        obs.reachable = False
        obs.error = f"{root}: no node root here (state.txt missing)"
        return obs, {}
    for name in ("state.txt", "heartbeat", "gossip", "fence", "policy", "replication"):
        path = root / name
        if not os.path.lexists(path) and name in ("heartbeat", "gossip", "replication"):
            continue
        try:
            if name in ("fence", "policy", "replication"):
                cf = controlfile.read(path)  # integrity only: the policy holds the whole membership, large to parse
                if name == "policy":
                    obs.policy_digest = policy_digest_line(cf.body)
                continue
            body, _ = controlfile.read_mapping(path)
        except HaiosError as exc:
            obs.control_errors.append(exc.message)
            continue
        wrong = shapes.problem_for(name, body, node)
        if wrong is not None:
            obs.control_errors.append(f"{path}: {wrong}: not a {name} haios wrote")
            continue
        if name == "state.txt":
            obs.state = body
        elif name == "heartbeat":
            obs.heartbeat = body
        elif name == "gossip":
            obs.gossip = body
    wal = root / "wal"
    if wal.is_symlink():  # a node's WAL is its own: one linked to another's would prove the other's history
        obs.control_errors.append(
            f"{wal}: is a symlink (to {os.readlink(wal)}); a node's WAL is a directory of its own"
        )
    # Only the current and the next iteration can have a phase IN_PROGRESS; older files are history.
    current_g = int((obs.state or {}).get("g") or 0)
    for path in (root / f"exec_status_{g}.txt" for g in (current_g, current_g + 1)):
        if not path.exists():
            continue
        try:
            body, _ = controlfile.read_mapping(path)
        except HaiosError as exc:
            obs.control_errors.append(exc.message)
            continue
        wrong = shapes.problem("exec_status", body)
        if wrong is not None:
            obs.control_errors.append(f"{path}: {wrong}: not an exec_status file haios wrote")
            continue
        obs.exec_status[body["g"]] = body
    if cache is _LOAD:
        cache = _load_cache(repo, node)
    before = json.dumps(cache, sort_keys=True) if cache is not None else None  # the fold changes it in place
    state, read, corruption = _read_wal(root, cache)
    if corruption is not None and cache is not None and not corruption["torn_tail"]:
        # the WAL may have been repaired or replaced since the cursor was saved: read it whole
        state, read_again, corruption = _read_wal(root, None)
        read += read_again
    obs.wal_error = _not_torn_if_read_before(corruption, cache)
    state["verified_to"] = _verified_to(root / "wal", cache, state)
    obs.phases = _summaries_from(state["phases"])
    obs.last_lamport = state["last_lamport"]
    obs.override_nonces = tuple(state.get("override_nonces") or ())
    obs.records = state["records"]
    obs.bytes_read = read
    obs.io = dict(state["io"])
    text = json.dumps(state, sort_keys=True)
    if text != before:  # most passes over a quiet node: the cache as it was, not written again
        makedirs_durable(repo / CACHE_DIR)
        # a cache: if a crash loses it, the next pass reads the WAL from the start
        atomic_write(_cache_path(repo, node), text.encode(), durable=False)
    return obs, state["durations"]


Observed = tuple[NodeObservation, dict[str, list[float]]]


def _fetch(transport: Transport, node: str) -> Path | Observed:
    """The node's files here (its local view), or the observation of a node that cannot be reached."""
    try:
        return transport.local_view(node)
    except HaiosError as exc:
        refused = exc.exit_code == EXIT_VERIFICATION
        return NodeObservation(node, reachable=False, error=exc.message, hint=exc.hint, refused=refused), {}


def _observe_through(repo: Path, transport: Transport, node: str, cache: dict[str, Any] | None = _LOAD) -> Observed:
    got = _fetch(transport, node)
    return observe_node(repo, node, got, cache) if isinstance(got, Path) else got


def _late(node: str, timeout: float) -> Observed:
    return NodeObservation(node, reachable=False, error=f"{node}: not observed within {timeout:.0f} s"), {}


def unread_bytes(root: Path, cache: dict[str, Any] | None) -> int:
    """How many WAL bytes of the node at ``root`` the next pass has to read (from the cursor of its
    cache, as :func:`_load_cache` gives it)."""
    cursor = Cursor(**cache["cursor"]) if cache and cache.get("cursor") else None
    total = 0
    for seg in list_segments(root / "wal"):
        size = seg.path.stat().st_size
        if cursor is None or seg.seq > cursor.seq:
            total += size
        elif seg.seq == cursor.seq:
            total += max(0, size - cursor.offset)
    return total


PROCESS_THRESHOLD = 64 * 1024 * 1024
"""Above this many unread WAL bytes in all, local nodes are read by worker processes, one per CPU:
reading is CPU-bound Python, which threads cannot spread over cores (a first pass over a large
cluster); below it, starting the processes would cost more than it saves."""


def _observe_local(repo: Path, node: str, root: Path, cache: dict[str, Any] | None = _LOAD) -> Observed:
    try:
        return observe_node(repo, node, root, cache)
    except (HaiosError, OSError) as exc:
        return NodeObservation(node, reachable=False, error=f"{node}: {exc}"), {}


def _process_pool(jobs: int) -> ProcessPoolExecutor:
    import multiprocessing

    # the workers leave Ctrl-C to this process and die with it, however it ends
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(jobs, context, initializer=worker_initializer, initargs=(os.getpid(),))


def _result(node: str, future: Future[Observed], timeout: float) -> Observed:
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        return _late(node, timeout)


def _in_processes(repo: Path, roots: dict[str, Path], timeout: float) -> dict[str, Observed]:
    with _process_pool(min(len(roots), os.cpu_count() or 1)) as pool:
        futures = {node: pool.submit(_observe_local, repo, node, root) for node, root in sorted(roots.items())}
        return {node: _result(node, future, timeout) for node, future in futures.items()}


REMOTE_NODE_BYTES = 256 * 1024
REMOTE_POOL_BYTES = 4 * 1024 * 1024
"""Remote nodes are fetched by threads (they wait on the network); a fetched node with at least
REMOTE_NODE_BYTES of WAL to read is read by a worker process once such nodes add up to
REMOTE_POOL_BYTES (a cold pass: reading is CPU-bound Python, which would otherwise hold the lock the
fetching threads need); the others are read where they were fetched."""


def _fetch_then_read(
    repo: Path, transport: Transport, nodes: list[str], parallelism: int, timeout: float
) -> dict[str, Observed]:
    """Remote nodes: fetched by threads; each read as soon as it is here, large ones in processes."""
    results: dict[str, Observed] = {}
    later: dict[str, Future[Observed]] = {}
    waiting: dict[str, Path] = {}  # large ones fetched before the pool is worth starting
    waiting_bytes = 0
    pool: ProcessPoolExecutor | None = None

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(nodes)))) as threads:
            fetches = {node: threads.submit(_fetch, transport, node) for node in sorted(nodes)}
            for node, future in fetches.items():
                try:
                    got = future.result(timeout=timeout)
                except FutureTimeout:
                    got = _late(node, timeout)
                except (HaiosError, OSError) as exc:
                    got = NodeObservation(node, reachable=False, error=f"{node}: {exc}"), {}
                if not isinstance(got, Path):
                    results[node] = got
                    continue
                cache = _load_cache(repo, node)
                unread = unread_bytes(got, cache)
                if unread < REMOTE_NODE_BYTES:
                    results[node] = _observe_local(repo, node, got, cache)
                    continue
                waiting[node] = got
                waiting_bytes += unread
                if pool is None and waiting_bytes >= REMOTE_POOL_BYTES:
                    pool = _process_pool(os.cpu_count() or 1)
                if pool is not None:
                    later.update({n: pool.submit(_observe_local, repo, n, r) for n, r in waiting.items()})
                    waiting.clear()
        for node, root in waiting.items():  # too few to be worth the processes
            results[node] = _observe_local(repo, node, root)
        results.update({node: _result(node, future, timeout) for node, future in later.items()})
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


def observe(
    repo: Path, transport: Transport, nodes: list[str], *, parallelism: int = 1, timeout: float = 60.0
) -> tuple[dict[str, NodeObservation], dict[str, list[float]]]:
    """Observe ``nodes`` through ``transport``; durations of all nodes are pooled per phase.

    When the nodes have more than PROCESS_THRESHOLD unread WAL bytes in all and the machine has more
    than one CPU, the local views are read in worker processes.
    """
    local = bool(getattr(transport, "all_local", True))  # remote views are fetched, not read from disk
    caches: dict[str, dict[str, Any] | None] = {}  # loaded once: to size the pass, then to go on from
    if local and (os.cpu_count() or 1) > 1 and len(nodes) > 1:
        roots = {}
        for node in nodes:
            try:
                roots[node] = transport.local_view(node)
            except HaiosError:
                roots = {}
                break
        caches = {n: _load_cache(repo, n) for n in roots}
        if roots and sum(unread_bytes(r, caches[n]) for n, r in roots.items()) > PROCESS_THRESHOLD:
            return _pooled(_in_processes(repo, roots, timeout))
    if not local and (os.cpu_count() or 1) > 1 and len(nodes) > 1:
        return _pooled(_fetch_then_read(repo, transport, nodes, parallelism, timeout))
    # threads for reading local files help little (CPU-bound); for remote nodes they wait on the network
    workers = max(1, min(parallelism, len(nodes), (os.cpu_count() or 1) * 4 if local else parallelism))
    results: dict[str, Observed] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            node: pool.submit(_observe_through, repo, transport, node, caches.get(node, _LOAD))
            for node in sorted(nodes)
        }
        for node, future in futures.items():
            try:
                results[node] = future.result(timeout=timeout)
            except FutureTimeout:
                results[node] = _late(node, timeout)
            except (HaiosError, OSError) as exc:
                results[node] = NodeObservation(node, reachable=False, error=f"{node}: {exc}"), {}
    return _pooled(results)


def _pooled(results: dict[str, Observed]) -> tuple[dict[str, NodeObservation], dict[str, list[float]]]:
    """The observations by node, and the durations of all nodes pooled per phase (in node order)."""
    observations: dict[str, NodeObservation] = {}
    durations: dict[str, list[float]] = {}
    for node, (obs, durs) in sorted(results.items()):
        observations[node] = obs
        for phase, values in durs.items():
            durations.setdefault(phase, []).extend(values)
    return observations, durations


def applied_nonces(repo: Path, config: RepoConfig, *, fresh: bool = False) -> dict[str, list[str]]:
    """node -> the nonces of the overrides its WAL says were applied to it: as the last ``doctor``,
    ``plan`` or ``reconcile`` pass saw them, or (``fresh``) read from the nodes now, through the
    transport; a node that cannot be reached now counts with what the last pass saw."""
    found = {n.name: cached_override_nonces(repo, n.name) for n in config.cluster.nodes}
    if fresh:
        transport = open_transport(repo, config)
        try:
            observations, _ = observe(repo, transport, sorted(set(found) & set(transport.nodes())))
        finally:
            transport.close()
        found.update({n: list(o.override_nonces) for n, o in observations.items() if o.reachable})
    return found
