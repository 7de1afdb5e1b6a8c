"""A node's phase executor for the simulator: one long-lived process per node, driven over stdin.

Each request is one JSON line; each answer one JSON line. ``phase`` runs BEGIN, the planned intents
and side effects and PREPARE, answers ``prepared`` and waits for ``commit`` or ``abort``. A request
may name a point (``die_at``) where the worker SIGKILLs itself: a real crash of the real WAL writer,
at a point chosen by the simulator's seed.

    python -m haios.sim.worker ROOT CLOUD_DIR [PARENT_PID]

With PARENT_PID, the worker dies with that process (the simulator), however the simulator ends.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .. import replication as _replication  # noqa: F401 - plugs WAL replication into the node this runs
from ..errors import HaiosError
from ..node import Node
from ..procutil import die_with_parent
from ..vclock import VClock
from .cloud import FakeCloud


def _answer(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def _die(point: str, die_at: str | None) -> None:
    if point == die_at:
        os.kill(os.getpid(), signal.SIGKILL)


def _phase(node: Node, cloud: FakeCloud, req: dict[str, Any]) -> None:
    die_at = req.get("die_at")
    g, phase = req["g"], req["phase"]
    tx = node.begin(g, phase, participants=req["participants"], trace_id=req["trace_id"])
    tx.observe(VClock.from_json(req.get("vc", {})))
    tx.event("phase_transition.started")
    _die("after_begin", die_at)
    for i, item in enumerate(req["intents"], start=1):
        tx.intent(item["path"], item["content"].encode() if item["content"] is not None else None)
        _die(f"after_intent_{i}", die_at)
    for effect in req["effects"]:
        # relative to the node root, where compensating commands run: the same in every copy of a run
        params = {"resource": effect["resource"], "cloud": os.path.relpath(cloud.dir, node.root)}
        cost = {"amount": effect["cost"], "currency": "EUR"}
        tx.side_effect(effect["key"], effect["kind"], params, effect["compensator"], cost)
        _die("before_side_effect_call", die_at)
        result = cloud.create(effect["kind"], effect["resource"], effect["key"], node.name)
        tx.side_effect_done(effect["key"], {"cost": result["cost"]})
    _die("after_side_effects", die_at)
    digest = tx.prepare()
    _die("after_prepare", die_at)
    _answer(ev="prepared", digest=digest, vc=tx.vc.to_json())
    decision = json.loads(sys.stdin.readline() or '{"cmd": "exit"}')
    if decision["cmd"] == "commit":
        tx.observe(VClock.from_json(decision.get("vc", {})))
        tx.event("phase_transition.finished")
        tx.commit()
        _answer(ev="committed", vc=tx.vc.to_json())
    elif decision["cmd"] == "abort":
        tx.abort(decision.get("reason", "coordinator abort"))
        _answer(ev="aborted")
    else:
        tx.close()
        sys.exit(0)


def main(argv: list[str]) -> int:
    if len(argv) > 2:
        die_with_parent(int(argv[2]))
    root, cloud = Path(argv[0]), FakeCloud(argv[1])
    slow = float(os.environ.get("HAIOS_SIM_SLOW_FSYNC", "0"))

    def sync(fd: int) -> None:
        if slow:
            time.sleep(slow)
        os.fdatasync(fd)

    node = Node(root, sync=sync)
    _answer(ev="ready", node=node.name)
    try:
        for line in sys.stdin:
            req = json.loads(line)
            if req["cmd"] == "exit":
                return 0
            try:
                _phase(node, cloud, req)
            except HaiosError as exc:
                _answer(ev="refused", error=type(exc).__name__, message=exc.one_line())
        return 0
    finally:
        node.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
