"""A fake cloud for side effects: a file-backed ledger of resources, costs and compensations.

Executors create resources (a VM, a DNS record) as side effects; compensators delete them. Every call
is appended to ``ledger.jsonl`` under an exclusive lock, so compensation is observable from outside
(``haios sim check`` counts successful compensations per idempotency key). ``faults.json`` makes
calls fail: ``{"fail": {"delete": {"fakecloud.vm": 2}}}`` fails the next two VM deletions
(``-1``: forever), ``slow`` adds seconds per call, ``cost_multiplier`` inflates costs (cost spikes).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import CloudError
from ..fsutil import atomic_write, makedirs_durable

KINDS = ("fakecloud.vm", "fakecloud.dns")
BASE_COST = {"fakecloud.vm": 12.0, "fakecloud.dns": 0.5}


class FakeCloud:
    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    def _locked(self) -> int:
        makedirs_durable(self.dir)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def faults(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads((self.dir / "faults.json").read_text())
            return loaded
        except FileNotFoundError:
            return {}

    def set_faults(self, faults: dict[str, Any]) -> None:
        makedirs_durable(self.dir)
        atomic_write(self.dir / "faults.json", json.dumps(faults, sort_keys=True).encode())

    def ledger(self) -> list[dict[str, Any]]:
        try:
            text = (self.dir / "ledger.jsonl").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _call(self, op: str, kind: str, resource: str, key: str, node: str) -> dict[str, Any]:
        if kind not in KINDS:
            raise CloudError(f"fake cloud: unknown resource kind {kind!r}")
        fd = self._locked()
        try:
            if op == "delete":
                for earlier in self.ledger():
                    if earlier["op"] == "delete" and earlier["key"] == key and earlier.get("ok"):
                        if (earlier["kind"], earlier["resource"]) != (kind, resource):
                            raise CloudError(
                                f"fake cloud: key {key} was used for {earlier['kind']} {earlier['resource']}"
                            )
                        return {**earlier, "replayed": True}  # under the lock: two callers cannot both delete
            faults = self.faults()
            time.sleep(float(faults.get("slow", 0)))
            remaining = faults.get("fail", {}).get(op, {}).get(kind, 0)
            exists = self._exists(kind, resource)
            entry: dict[str, Any] = {
                "op": op,
                "kind": kind,
                "resource": resource,
                "key": key,
                "node": node,
                "ts": time.time(),
            }
            if remaining:
                if remaining > 0:
                    faults["fail"][op][kind] = remaining - 1
                    self.set_faults(faults)
                entry.update(ok=False, error="injected failure")
            else:
                cost = BASE_COST[kind] * float(faults.get("cost_multiplier", 1.0)) if op == "create" else 0.0
                entry.update(ok=True, cost=cost, existed=exists)
            with open(self.dir / "ledger.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            os.close(fd)
        if not entry["ok"]:
            raise CloudError(f"fake cloud: {op} {kind} {resource} failed (injected)")
        return entry

    def _exists(self, kind: str, resource: str) -> bool:
        alive = False
        for e in self.ledger():
            if e["kind"] == kind and e["resource"] == resource and e.get("ok"):
                alive = e["op"] == "create"
        return alive

    def create(self, kind: str, resource: str, key: str, node: str) -> dict[str, Any]:
        return self._call("create", kind, resource, key, node)

    def delete(self, kind: str, resource: str, key: str, node: str) -> dict[str, Any]:
        """Delete a resource; deleting one that never existed succeeds too (compensators must tolerate it).

        Like a cloud API with idempotency tokens, a second delete with the same key returns the first
        one's result (marked ``replayed``) and changes nothing: a compensator killed after the call but
        before haios recorded it is safe to run again.
        """
        return self._call("delete", kind, resource, key, node)
