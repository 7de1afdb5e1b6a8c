"""The ``etcd`` coordination backend (SPEC §6.2): leases in a Raft store, for many reconcilers.

Keys, under ``<prefix><cluster>/``:

``locks/<shard>``
    the live lease as JSON (holder, trace, acquired, expires), attached to an etcd lease with the
    lease's TTL: a holder that dies stops keeping it alive and etcd deletes the key by itself;
``last/<shard>``
    the last lease taken or released (no TTL), so a takeover knows whom it took over from;
``barrier``
    the cluster-wide barrier: the last transition committed everywhere and ``g`` (no TTL); its mod
    revision is the version a compare-and-swap compares;
``token_floor``
    set once, when the cluster first uses etcd: the highest token the git backend ever granted, so
    that nodes fenced under git accept etcd's tokens.

The fencing token is the lock key's **create revision** plus the floor. etcd's revisions only grow,
and a key deleted and created again gets a new, higher create revision, so every acquisition —
takeovers included — carries a higher token than any before it, while renewals (which rewrite the
value) keep theirs. Every change is a transaction that compares revisions (compare-and-swap).

The client is etcd3gw (etcd's JSON gateway, ``/v3/``); it talks to one endpoint, so this backend
fails over itself: a call that cannot reach an endpoint goes to the next, and only when every
endpoint fails is it an error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..config.model import PHASES
from ..errors import BarrierMoved, CoordinationError, FencedError, LockHeldError
from .base import Barrier, Lease, check_advance, held_error
from .git import GitBackend

T = TypeVar("T")
MIN_TTL = 2  # etcd rounds shorter leases up to its own minimum anyway


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


# what a member answers while the cluster elects a leader (etcd's default election timeout is 1 s)
ELECTING = ("leader changed", "no leader", '"code":14')
ELECTION_WAIT = 5.0  # s a call waits for an election to end before calling etcd unreachable
ELECTION_PAUSE = 0.1


def _why(exc: Exception) -> str:
    """etcd3gw keeps the underlying error's text in ``detail_text``; say the gist of it."""
    text = " ".join(str(getattr(exc, "detail_text", None) or exc).split())
    for gist in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if gist.lower() in text.lower():
            return gist.lower()
    return text[:160] or type(exc).__name__


class _Lost(Exception):
    """A transaction's comparison failed: someone changed the key first."""


class EtcdBackend:
    def __init__(
        self,
        endpoints: list[str] | tuple[str, ...],
        *,
        cluster: str,
        prefix: str = "/haios/",
        timeout: float = 5.0,
        repo: Path | None = None,
        attempts: int = 20,
    ) -> None:
        from etcd3gw.client import Etcd3Client

        if not endpoints:
            raise CoordinationError("coordination backend etcd needs at least one endpoint in haios.yaml")
        self.endpoints = list(endpoints)
        self.clients = []
        for url in self.endpoints:
            parts = urlsplit(url)
            self.clients.append(
                Etcd3Client(
                    host=parts.hostname or "localhost",
                    port=parts.port or 2379,
                    protocol=parts.scheme or "http",
                    timeout=timeout,
                    api_path="/v3/",
                )
            )
        self.base = f"{prefix.rstrip('/')}/{cluster}/"
        self.repo = repo
        self.attempts = attempts
        self._current = 0
        self._floor: int | None = None

    # -- plumbing --------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` on the first endpoint that answers, starting from the last good one."""
        from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

        deadline: float | None = None
        while True:
            errors, electing = [], False
            for i in range(len(self.clients)):
                index = (self._current + i) % len(self.clients)
                try:
                    result = fn(self.clients[index])
                except (ConnectionFailedError, ConnectionTimeoutError) as exc:
                    why = _why(exc)
                    errors.append(f"{self.endpoints[index]}: {why}")
                    electing |= any(sign in why for sign in ELECTING)
                    continue
                except Etcd3Exception as exc:
                    raise CoordinationError(f"etcd {self.endpoints[index]}: {what} failed: {_why(exc)}") from exc
                self._current = index
                return result
            # members that answer but have no leader are electing one: wait that out, bounded; when
            # none answers at all, say so at once
            now = time.monotonic()
            deadline = now + ELECTION_WAIT if deadline is None else deadline
            if not electing or now >= deadline:
                raise CoordinationError(f"etcd unreachable ({what}): " + "; ".join(errors))
            time.sleep(ELECTION_PAUSE)

    def _post(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        def go(client: Any) -> dict[str, Any]:
            result: dict[str, Any] = client.post(client.get_url(path), json=body)
            return result

        return self._call(what, go)

    def _key(self, kind: str, shard: str = "") -> str:
        return f"{self.base}{kind}/{shard}" if shard else f"{self.base}{kind}"

    def _get(self, key: str) -> tuple[dict[str, Any], int, int] | None:
        """(value, create revision, mod revision) of ``key``, or None."""
        kvs = self._post("/kv/range", {"key": _b64(key)}, f"reading {key}").get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return json.loads(_unb64(kv["value"])), int(kv["create_revision"]), int(kv["mod_revision"])

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]], what: str) -> dict[str, Any]:
        result = self._post("/kv/txn", {"compare": compare, "success": success}, what)
        if not result.get("succeeded"):
            raise _Lost()
        return result

    @staticmethod
    def _put(key: str, value: dict[str, Any], lease: int | None = None) -> dict[str, Any]:
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(json.dumps(value, sort_keys=True))}
        if lease is not None:
            put["lease"] = lease
        return {"request_put": put}

    def floor(self) -> int:
        """The token floor (set once: above every token the git backend granted)."""
        if self._floor is not None:
            return self._floor
        key = self._key("token_floor")
        found = self._get(key)
        if found is None:
            highest = 0
            if self.repo is not None and (self.repo / ".git").exists():
                git = GitBackend(self.repo)
                highest = max((lease.token for s in PHASES if (lease := git.read(s)) is not None), default=0)
            with contextlib.suppress(_Lost):  # another reconciler set it first: theirs counts
                self._txn(
                    [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
                    [self._put(key, {"floor": highest})],
                    "setting the token floor",
                )
            found = self._get(key)
            assert found is not None
        self._floor = int(found[0]["floor"])
        return self._floor

    def _lease_from(self, shard: str, value: dict[str, Any], create_revision: int) -> Lease:
        return Lease(
            shard,
            value["holder"],
            value["trace_id"],
            self.floor() + create_revision,
            float(value["acquired"]),
            float(value["expires"]),
            previous=value.get("previous"),
        )

    # -- the Backend interface -------------------------------------------------------------------

    def read(self, shard: str) -> Lease | None:
        found = self._get(self._key("locks", shard))
        if found is not None:
            return self._lease_from(shard, found[0], found[1])
        last = self._get(self._key("last", shard))
        if last is None:
            return None
        v = last[0]  # no live lock: the last one taken, released or expired
        return Lease(
            shard, v["holder"], v["trace_id"], int(v["token"]), float(v["acquired"]), float(v["expires"]), True
        )

    def acquire(self, shard: str, holder: str, trace_id: str, ttl: float, now: float) -> Lease:
        key, last_key = self._key("locks", shard), self._key("last", shard)
        for _ in range(self.attempts):
            found = self._get(key)
            if found is not None:
                current = self._lease_from(shard, found[0], found[1])
                if current.holder != holder and current.live(now):
                    raise held_error(shard, current)
                # ours from before, or its holder is gone: delete it, so the next one gets a new revision
                try:
                    self._txn(
                        [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": found[1]}],
                        [{"request_delete_range": {"key": _b64(key)}}],
                        f"taking over {key}",
                    )
                except _Lost:
                    continue
            last = self._get(last_key)
            previous = None
            if last is not None and not last[0].get("released") and last[0]["holder"] != holder:
                previous = {k: last[0][k] for k in ("holder", "trace_id", "token")}
            grant = self._post("/lease/grant", {"TTL": max(MIN_TTL, math.ceil(ttl))}, "granting a lease")
            lease_id = int(grant["ID"])
            value = {
                "holder": holder,
                "trace_id": trace_id,
                "acquired": now,
                "expires": now + ttl,
                "etcd_lease": lease_id,
                "previous": previous,
            }
            try:
                result = self._txn(
                    [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
                    [self._put(key, value, lease_id)],
                    f"taking {key}",
                )
            except _Lost:
                self._post("/kv/lease/revoke", {"ID": lease_id}, "revoking an unused lease")
                continue
            revision = int(result["header"]["revision"])  # the txn's revision: the key's create revision
            lease = Lease(shard, holder, trace_id, self.floor() + revision, now, now + ttl, previous=previous)
            record = {**{k: v for k, v in value.items() if k != "previous"}, "token": lease.token}
            self._post("/kv/put", self._put(last_key, record)["request_put"], f"recording {last_key}")
            return lease
        raise LockHeldError(f"shard {shard}: could not take the lease (too much contention)")

    def _ours(self, lease: Lease) -> tuple[dict[str, Any], int, int]:
        found = self._get(self._key("locks", lease.shard))
        if found is None or self.floor() + found[1] != lease.token or found[0]["holder"] != lease.holder:
            who = "" if found is None else f" by {found[0]['holder']} (token {self.floor() + found[1]})"
            raise FencedError(f"shard {lease.shard}: our lease (token {lease.token}) was taken over{who}")
        return found

    def renew(self, lease: Lease, ttl: float, now: float) -> Lease:
        for _ in range(self.attempts):
            value, _, mod = self._ours(lease)
            alive = self._post("/lease/keepalive", {"ID": int(value["etcd_lease"])}, "keeping the lease alive")
            if int((alive.get("result") or alive).get("TTL") or -1) <= 0:
                raise FencedError(f"shard {lease.shard}: our lease (token {lease.token}) expired in etcd")
            renewed = {**value, "expires": now + ttl}
            key = self._key("locks", lease.shard)
            try:
                self._txn(
                    [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod}],
                    [self._put(key, renewed, int(value["etcd_lease"]))],
                    f"renewing {key}",
                )
            except _Lost:
                continue
            return Lease(lease.shard, lease.holder, lease.trace_id, lease.token, lease.acquired, now + ttl)
        raise FencedError(f"shard {lease.shard}: could not renew the lease (too much contention)")

    def release(self, lease: Lease, now: float) -> None:
        try:
            value, create, _ = self._ours(lease)
        except FencedError:
            return  # someone took it over: nothing of ours to release
        key, last_key = self._key("locks", lease.shard), self._key("last", lease.shard)
        record = {k: v for k, v in value.items() if k != "previous"}
        record.update(token=lease.token, expires=now, released=True)
        try:
            self._txn(
                [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": create}],
                [{"request_delete_range": {"key": _b64(key)}}, self._put(last_key, record)],
                f"releasing {key}",
            )
        except _Lost:
            return
        self._post("/kv/lease/revoke", {"ID": int(value["etcd_lease"])}, "revoking the lease")

    # -- the barrier -----------------------------------------------------------------------------

    def barrier(self) -> Barrier:
        found = self._get(self._key("barrier"))
        if found is None:
            return Barrier()
        v = found[0]
        return Barrier(int(v["g"]), v.get("phase"), found[2], float(v.get("updated") or 0.0), str(v.get("by") or ""))

    def advance_barrier(self, seen: Barrier, g: int, phase: str, by: str, now: float) -> Barrier:
        check_advance(seen, g, phase)
        key = self._key("barrier")
        value = {"g": g, "phase": phase, "updated": now, "by": by}
        # version 0: the key must not exist yet; otherwise its mod revision must be the one we read
        compare = (
            {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
            if seen.version == 0
            else {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": seen.version}
        )
        try:
            result = self._txn([compare], [self._put(key, value)], f"advancing {key}")
        except _Lost:
            now_at = self.barrier()
            raise BarrierMoved(
                f"the barrier moved to (g={now_at.g}, {now_at.phase}) meanwhile (by {now_at.by})"
            ) from None
        return Barrier(g, phase, int(result["header"]["revision"]), now, by)

    # -- health ----------------------------------------------------------------------------------

    def health(self) -> dict[str, str | None]:
        """Each endpoint: None when it answers as a member of a cluster with a leader, else why not."""
        from etcd3gw.exceptions import Etcd3Exception

        out: dict[str, str | None] = {}
        for url, client in zip(self.endpoints, self.clients, strict=True):
            try:
                status = client.post(client.get_url("/maintenance/status"), json={})
            except Etcd3Exception as exc:
                out[url] = _why(exc)
                continue
            out[url] = None if int(status.get("leader") or 0) else "no leader"
        return out
