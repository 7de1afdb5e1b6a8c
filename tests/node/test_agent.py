"""The node agent over real node roots: rounds of heartbeat and gossip, a fake clock, links cut at will."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import subprocs

from haios import controlfile
from haios.errors import LockHeldError, TransportError
from haios.node import init_node_root
from haios.node.gossip import handle
from haios.ops.agent import FANOUT, Agent, agent_lock, running
from haios.timefmt import parse_utc
from haios.transport.local import LocalExchange

T0 = 1_800_000_000.0
NODES = ("n1", "n2", "n3", "n4", "n5")
INTERVAL, WINDOW = 15.0, 45.0


def _policy(tmp_path: Path, interval: float = INTERVAL) -> dict[str, Any]:
    return {
        "cluster": "c",
        "max_g": None,
        "membership": dict.fromkeys(NODES, "active"),
        "peers": {n: {"transport": "local", "root": str(tmp_path / n)} for n in NODES},
        "thresholds": {"heartbeat_interval": interval, "partition_window": WINDOW},
    }


class Lab:
    """Five node roots, an agent each, a shared fake clock, and a set of cut links."""

    def __init__(self, tmp_path: Path) -> None:
        self.t = T0
        self.cut: set[frozenset[str]] = set()
        self.roots = {n: tmp_path / n for n in NODES}
        for name, root in self.roots.items():
            init_node_root(root, name, _policy(tmp_path))
        self.lines: list[str] = []
        self.agents = {
            n: Agent(
                self.roots[n], log=self.lines.append, clock=lambda: self.t, rng=random.Random(i), connect=self._link(n)
            )
            for i, n in enumerate(NODES)
        }

    def _link(self, me: str) -> Any:
        def connect(peer: str) -> Any:
            lab = self

            class Cuttable(LocalExchange):
                def request(self, request: dict[str, Any]) -> dict[str, Any]:
                    if frozenset((me, peer)) in lab.cut:
                        raise TransportError(f"{peer}: link cut")
                    return super().request(request)

            return Cuttable(peer, self.roots[peer], lambda root, req: handle(root, req, self.t))

        return connect

    def rounds(self, count: int, who: tuple[str, ...] = NODES) -> None:
        for _ in range(count):
            for name in who:
                self.agents[name].round()
            self.t += INTERVAL

    def split(self, left: tuple[str, ...], right: tuple[str, ...]) -> None:
        self.cut = {frozenset((a, b)) for a in left for b in right}

    def status(self, name: str) -> str:
        return str(controlfile.read_mapping(self.roots[name] / "gossip")[0]["partition_status"])


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def test_every_member_is_heard_though_each_round_reaches_only_a_few(lab: Lab) -> None:
    lab.rounds(3)
    for name in NODES:
        body = controlfile.read_mapping(lab.roots[name] / "gossip")[0]
        assert body["partition_status"] == "NORMAL"
        assert set(body["peers"]) == set(NODES) - {name}
        assert all(_t(w) >= T0 + 2 * INTERVAL - WINDOW for w in body["peers"].values())
    assert len(NODES) - 1 > FANOUT  # not the whole membership each round


def test_a_stopped_member_falls_silent_everywhere_and_is_no_partition(lab: Lab) -> None:
    lab.rounds(2)
    last = lab.t
    lab.rounds(5, who=("n1", "n2", "n3", "n4"))  # n5's agent stopped: its number no longer rises
    for name in ("n1", "n2", "n3", "n4"):
        body = controlfile.read_mapping(lab.roots[name] / "gossip")[0]
        heard = _t(body["peers"]["n5"])  # its last number, relayed until everyone had it; nothing since
        assert heard <= last and lab.t - heard > WINDOW and lab.status(name) == "NORMAL"


def test_split_two_three_the_two_are_partitioned_and_heal(lab: Lab) -> None:
    lab.rounds(2)
    lab.split(("n1", "n2"), ("n3", "n4", "n5"))
    lab.rounds(int(WINDOW / INTERVAL) + 2)
    assert [lab.status(n) for n in NODES] == ["PARTITIONED", "PARTITIONED", "NORMAL", "NORMAL", "NORMAL"]
    assert any("n1: PARTITIONED" in line for line in lab.lines)
    lab.split((), ())
    lab.rounds(3)
    assert {lab.status(n) for n in NODES} == {"NORMAL"}
    assert any("reached" in line and "again" in line for line in lab.lines)


def test_a_member_heard_only_through_others_is_heard(lab: Lab) -> None:
    lab.split(("n1",), ("n5",))  # n1 and n5 never talk, but both talk to everyone else
    lab.rounds(6)
    body = controlfile.read_mapping(lab.roots["n1"] / "gossip")[0]
    assert lab.t - _t(body["peers"]["n5"]) <= WINDOW and lab.status("n1") == "NORMAL"


def _t(stamp: str) -> float:
    return parse_utc(stamp)


def test_one_agent_per_root(tmp_path: Path) -> None:
    init_node_root(tmp_path / "n1", "n1", _policy(tmp_path))
    assert running(tmp_path / "n1") is None
    with agent_lock(tmp_path / "n1"):
        assert running(tmp_path / "n1") == os.getpid()
        with pytest.raises(LockHeldError, match="already running"), agent_lock(tmp_path / "n1"):
            pass
    assert running(tmp_path / "n1") is None


def test_the_agent_command_runs_checks_and_stops_on_sigterm(tmp_path: Path) -> None:
    for name in NODES:
        init_node_root(tmp_path / name, name, _policy(tmp_path, interval=0.2))
    root = tmp_path / "n1"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    once = subprocs.run(
        [sys.executable, "-m", "haios", "agent", str(root), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert once.returncode == 0, once.stderr
    assert controlfile.read_mapping(root / "heartbeat")[0]["seq"] == 1
    check = [sys.executable, "-m", "haios", "-o", "json", "agent", str(root), "--check"]
    idle = subprocs.run(check, capture_output=True, text=True, timeout=60, env=env)
    assert idle.returncode == 1 and json.loads(idle.stdout)["running"] is False
    with subprocs.spawn(
        [sys.executable, "-m", "haios", "agent", str(root)], stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stderr is not None
            assert "started" in proc.stderr.readline()
            deadline = time.monotonic() + 60
            while controlfile.read_mapping(root / "heartbeat")[0]["seq"] < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            busy = subprocs.run(check, capture_output=True, text=True, timeout=60, env=env)
            assert busy.returncode == 0 and json.loads(busy.stdout)["pid"] == proc.pid
            again = [sys.executable, "-m", "haios", "agent", str(root)]
            second = subprocs.run(again, capture_output=True, text=True, timeout=60, env=env)
            assert second.returncode == 4 and "already running" in second.stderr
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            assert "stopped after" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert running(root) is None


def test_a_damaged_policy_is_said_and_the_agent_goes_on(tmp_path: Path) -> None:
    init_node_root(tmp_path / "n1", "n1", _policy(tmp_path))
    (tmp_path / "n1" / "policy").write_bytes(b"cluster: c\n#haios v=1 sha256=" + b"0" * 64 + b"\n")
    lines: list[str] = []
    agent = Agent(tmp_path / "n1", log=lines.append, clock=lambda: T0)
    assert agent.run(threading.Event(), once=True) == 1
    assert len(lines) == 1 and "round failed" in lines[0] and "policy" in lines[0]
