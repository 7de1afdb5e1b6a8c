"""``haios sim init|run``: a real local cluster driven through the PhaseDriver, with injected faults.

The simulator's directory is an ordinary desired-state repo (``haios init``) with node roots under
``nodes/`` and its own scratch in ``.sim/`` (the fake cloud, the fault log). Every node's phase work
runs in a long-lived worker process (:mod:`haios.sim.worker`); a *kill* is a real SIGKILL of that
process at a point the seed chooses. Everything random comes from one ``random.Random(seed)`` used
in a fixed order, so a run is reproducible from its seed: the same faults, the same WAL payloads
(timestamps aside).

A run stops at the first transition that did not commit cluster-wide (or that a fault damaged
afterwards): the cluster then needs recovery before it can go on, which is what ``haios sim check``
and, later, ``haios reconcile`` are for.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import controlfile
from ..cluster import PhaseDriver
from ..config import load_repo
from ..config.model import PHASES, RepoConfig
from ..errors import BlockedError, HaiosError, ParticipantFailed, UsageError
from ..fsutil import atomic_write, makedirs_durable
from ..gitrepo import init_and_commit
from ..node.heartbeat import beat
from ..node.transaction import scan_phases
from ..ops.init import init_repo
from ..recovery.membership import participants
from ..timefmt import utc
from ..vclock import VClock
from ..wal import read_records
from ..wal.reader import list_segments
from .cloud import FakeCloud

FAULT_KINDS = ("kill", "torn", "bitflip", "partition", "slowfsync", "compfail", "cost")
KILL_POINTS = (
    "after_begin",
    "after_intent_1",
    "before_side_effect_call",
    "after_side_effects",
    "after_prepare",
    "after_some_commits",
)


def parse_faults(spec: str) -> dict[str, float]:
    """``none``, or a comma list ``name=probability`` of FAULT_KINDS (a bare name means 1)."""
    if spec.strip() in ("", "none"):
        return {}
    faults: dict[str, float] = {}
    for part in spec.split(","):
        name, _, value = part.strip().partition("=")
        if name not in FAULT_KINDS:
            raise UsageError(f"unknown fault {name!r} (known: {', '.join(FAULT_KINDS)})")
        try:
            p = float(value) if value else 1.0
        except ValueError:
            raise UsageError(f"fault {name}: {value!r} is not a probability") from None
        if not 0.0 <= p <= 1.0:
            raise UsageError(f"fault {name}: probability {p} is outside [0, 1]")
        faults[name] = p
    return faults


def sim_dir(directory: Path) -> Path:
    return directory / ".sim"


def log_fault(directory: Path, **entry: Any) -> None:
    makedirs_durable(sim_dir(directory))
    with open(sim_dir(directory) / "faults.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"ts": time.time(), **entry}, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# Simulated phases take milliseconds, not minutes: priors that make the detectors' timeouts fit.
SIM_PRIORS = {"ANALYZE": "500ms", "BLUEPRINT": "500ms", "CONSTRUCT": "1s", "VALIDATE": "500ms", "IDLE": "500ms"}


@dataclass(frozen=True)
class SshLayout:
    """One sshd on this machine through which every simulated node's root is reached."""

    address: str
    port: int
    user: str
    host_key: str  # its SHA256 fingerprint, pinned in haios.yaml


def sim_roots(path: Path, config: RepoConfig) -> dict[str, Path]:
    """The node roots the simulator drives directly: local nodes, and ssh nodes laid out on this
    machine behind a local sshd (their root exists here)."""
    roots = {}
    for n in config.cluster.nodes:
        root = n.local_root(path)
        if n.transport == "local" or (n.transport == "ssh" and (root / "state.txt").exists()):
            roots[n.name] = root
    return roots


def reach_through_sshd(path: Path, ssh: SshLayout) -> None:
    """Rewrite haios.yaml so every node is reached over SSH at its (absolute) root in ``nodes/``."""
    config = path / "haios.yaml"
    text = config.read_text()
    for match in re.finditer(r"  - name: (\S+)\n    transport: local\n    root: nodes/\S+[^\n]*\n", text):
        name = match.group(1)
        text = text.replace(
            match.group(0),
            f"  - name: {name}\n    transport: ssh\n    address: {ssh.address}\n    port: {ssh.port}\n"
            f"    user: {ssh.user}\n    root: {(path / 'nodes' / name).resolve()}\n    host_key: {ssh.host_key}\n",
        )
    atomic_write(config, text.encode())


def replicate(path: Path) -> None:
    """Turn sync-majority WAL replication on in haios.yaml (the policy that says so, and how to reach
    every peer, reaches the fresh node roots at the end of :func:`sim_init`)."""
    config = path / "haios.yaml"
    text = re.sub(r"(?m)^  mode: 'off'.*$", "  mode: sync-majority", config.read_text(), count=1)
    atomic_write(config, text.encode())


def provision_policy(path: Path, commit: str) -> None:
    """Give the fresh node roots the policy compiled from the committed desired state, as the first
    reconcile would: nothing was written under the one they were made with."""
    repo = load_repo(path)
    policy = repo.compile_policy(commit)
    for root in sim_roots(path, repo).values():
        controlfile.write_mapping(
            root / "policy", policy, expected_version=controlfile.current_version(root / "policy")
        )


def sim_init(directory: Path | str, nodes: int, *, ssh: SshLayout | None = None, replication: bool = False) -> Path:
    """A desired-state repo for a cluster of ``nodes`` nodes on this machine, plus the simulator's
    scratch; with ``ssh``, haios reaches the nodes through that sshd (the simulator itself drives
    their roots directly, as a HAiOS scheduler on each node would); with ``replication``, every
    node's WAL is replicated to a majority of its replica group (SPEC §6.1)."""
    path = Path(directory)
    init_repo(path, cluster="sim", nodes=nodes, transport="local", replication="off")  # rehearsals stay fast
    if ssh is not None:
        reach_through_sshd(path, ssh)
    if replication:
        replicate(path)
    thresholds = path / "policies/thresholds.yaml"
    text = thresholds.read_text()
    for phase, prior in SIM_PRIORS.items():
        text = re.sub(rf"(\n    {phase}: )\S+", rf"\g<1>{prior}", text, count=1)
    atomic_write(thresholds, text.encode())
    # the fake cloud bills in the default rates; dated today, so a rehearsal's rates are never stale
    fx = path / "policies/fx.yaml"
    today = time.strftime("%Y-%m-%d", time.gmtime())
    text = re.sub(r"(?m)^date: \S+\n", "", fx.read_text(), count=1)
    text = re.sub(
        r"(?m)^source: .*$",
        f"date: {today}\nsource: haios simulator (the default rates, dated when the cluster was made)",
        text,
        count=1,
    )
    atomic_write(fx, text.encode())
    commit = init_and_commit(path, "haios sim init: phase priors for simulated (sub-second) phases, rates dated today")
    provision_policy(path, commit)
    FakeCloud(sim_dir(path) / "cloud").set_faults({})
    return path


class WorkerParticipant:
    """A node's worker process, as a PhaseDriver participant."""

    def __init__(self, name: str, root: Path, cloud: Path, env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "haios.sim.worker", str(root), str(cloud), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.plan: dict[str, Any] = {}
        ready = self._read()
        if ready.get("ev") != "ready":
            raise HaiosError(f"{name}: simulator worker did not start ({ready})")

    def _send(self, **msg: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ParticipantFailed(f"{self.name}: worker is gone ({exc})") from exc

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise ParticipantFailed(f"{self.name}: worker died (exit {code})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def prepare(self, g: int, phase: str, participants: list[str], trace_id: str, vc: VClock) -> VClock:
        self._send(
            cmd="phase", g=g, phase=phase, participants=participants, trace_id=trace_id, vc=vc.to_json(), **self.plan
        )
        answer = self._read()
        if answer.get("ev") != "prepared":
            raise ParticipantFailed(f"{self.name}: {answer.get('message', answer)}")
        return VClock.from_json(answer["vc"])

    def commit(self, vc: VClock) -> VClock:
        self._send(cmd="commit", vc=vc.to_json())
        answer = self._read()
        if answer.get("ev") != "committed":
            raise ParticipantFailed(f"{self.name}: {answer}")
        return VClock.from_json(answer["vc"])

    def abort(self, reason: str) -> None:
        if self.alive:
            self._send(cmd="abort", reason=reason)
            self._read()

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.alive:
            with contextlib.suppress(ParticipantFailed):
                self._send(cmd="exit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@dataclass
class RunReport:
    directory: Path
    seed: int
    transitions: int = 0
    committed: int = 0
    stopped_at: tuple[int, str] | None = None
    reason: str = ""
    faults: list[dict[str, Any]] = field(default_factory=list)
    last: tuple[int, str | None] = (0, None)


def _cluster_position(roots: dict[str, Path]) -> tuple[int, str | None]:
    """Where every node stands; refuses a cluster with an open phase or nodes that disagree."""
    positions = set()
    for name, root in roots.items():
        open_phases = [log for log in scan_phases(root).values() if log.ended is None]
        if open_phases:
            raise BlockedError(
                f"{name}: (g={open_phases[0].g}, {open_phases[0].phase}) is half done; the cluster needs recovery first",
                hint="run 'haios sim check' to see it ('haios reconcile' recovers it)",
            )
        state, _ = controlfile.read_mapping(root / "state.txt")
        positions.add((state["g"], state["ph"]))
    if len(positions) != 1:
        raise BlockedError(f"nodes disagree on the last committed transition: {sorted(positions, key=str)}")
    (position,) = positions
    return position


def _plan(rng: random.Random, g: int, phase: str, node: str, seed: int, cost_spike: bool) -> dict[str, Any]:
    intents: list[dict[str, str | None]] = [
        {
            "path": f"{phase.lower()}/item-{i}.conf",
            "content": f"g={g} phase={phase} node={node} item={i} v={rng.randrange(1 << 30)}\n",
        }
        for i in range(1, rng.randint(1, 3) + 1)
    ]
    if g > 1 and rng.random() < 0.2:
        # delete a file an earlier iteration may have written (absent: nothing to do)
        intents.append({"path": f"{phase.lower()}/item-{len(intents) + 1}.conf", "content": None})
    effects = []
    if rng.random() < 0.3:
        kind = rng.choice(("fakecloud.vm", "fakecloud.dns"))
        resource = f"{kind.split('.')[1]}-{node}-{g}-{phase.lower()}"
        effects.append(
            {
                "key": f"sim-{seed}-{g}-{phase}-{node}",
                "kind": kind,
                "resource": resource,
                "compensator": kind.replace(".", "-"),
                "cost": 1000.0 if cost_spike else 1.0,
            }
        )
    return {"intents": intents, "effects": effects}


def _damage_tail(root: Path, rng: random.Random) -> dict[str, Any]:
    """Torn write: cut the node's last WAL record at a random byte."""
    segment = list_segments(root / "wal")[-1].path
    last = list(read_records(root / "wal"))[-1]
    size = segment.stat().st_size
    cut = rng.randrange(last.offset + 1, size)
    with open(segment, "r+b") as fh:
        fh.truncate(cut)
    return {"segment": segment.name, "cut_at": cut, "record_offset": last.offset, "lamport": last.lamport}


def _flip_bit(root: Path, rng: random.Random) -> dict[str, Any]:
    """Bit flip: one bit of one record in the middle of the node's WAL."""
    records = list(read_records(root / "wal"))
    target = records[rng.randrange(0, max(1, len(records) - 1))]
    segment = root / "wal" / target.segment
    data = bytearray(segment.read_bytes())
    offset = target.offset + rng.randrange(0, 32)
    bit = 1 << rng.randrange(8)
    data[offset] ^= bit
    with open(segment, "r+b") as fh:
        fh.write(bytes(data))
    return {"segment": target.segment, "offset": offset, "bit": bit, "lamport": target.lamport}


def _set_partition(root: Path, node: str, peers: list[str], partitioned: bool) -> None:
    path = root / "gossip"
    now = utc(time.time())
    body = {
        "node": node,
        "peers": {p: (None if partitioned else now) for p in peers if p != node},
        "partition_status": "PARTITIONED" if partitioned else "NORMAL",
        "since": now,
        "updated_at": now,
    }
    controlfile.write_mapping(path, body, expected_version=controlfile.current_version(path))


def sim_run(directory: Path | str, *, iterations: int, seed: int, faults: dict[str, float]) -> RunReport:
    """Drive ``iterations`` full iterations (5 transitions each) from where the cluster stands."""
    path = Path(directory)
    config = load_repo(path)
    roots = sim_roots(path, config)
    names = [n for n in participants(path, config) if n in roots]  # evicted nodes take no part
    if not names:
        raise UsageError(f"{path}: no active local nodes to simulate")
    report = RunReport(path, seed)
    report.last = _cluster_position({n: roots[n] for n in names})
    rng = random.Random(seed)
    cloud = FakeCloud(sim_dir(path) / "cloud")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if rng.random() < faults.get("slowfsync", 0.0):
        env["HAIOS_SIM_SLOW_FSYNC"] = "0.02"
        report.faults.append({"fault": "slowfsync", "seconds": 0.02})
        log_fault(path, fault="slowfsync", seconds=0.02, seed=seed)
    workers = {n: WorkerParticipant(n, roots[n], cloud.dir, env) for n in names}
    driver = PhaseDriver([workers[n] for n in names], last=report.last)
    try:
        for _ in range(iterations * len(PHASES)):
            g, phase = driver.next()
            now = time.time()
            for n in names:  # the nodes' agents beat as the cluster works
                beat(roots[n], n, now)
            drawn = {kind: rng.random() < faults.get(kind, 0.0) for kind in FAULT_KINDS if kind != "slowfsync"}
            victim = rng.choice(names)
            point = rng.choice(KILL_POINTS)
            minority = rng.sample(names, max(1, (len(names) - 1) // 2)) if len(names) > 2 else [victim]
            for n in names:
                workers[n].plan = _plan(rng, g, phase, n, seed, drawn["cost"])
            cloud_faults: dict[str, Any] = {}
            if drawn["compfail"]:
                cloud_faults["fail"] = {
                    "delete": {k: rng.choice((1, 3, -1)) for k in ("fakecloud.vm", "fakecloud.dns")}
                }
            if drawn["cost"]:
                cloud_faults["cost_multiplier"] = 100.0
            cloud.set_faults(cloud_faults)
            stop_after = None
            fault_entries = [
                {"fault": k, "g": g, "phase": phase, **({"cloud": cloud_faults} if k in ("compfail", "cost") else {})}
                for k in ("compfail", "cost")
                if drawn[k]
            ]
            partition_entry: dict[str, Any] | None = None
            if drawn["partition"]:
                for n in minority:
                    _set_partition(roots[n], n, names, True)
                partition_entry = {
                    "fault": "partition",
                    "g": g,
                    "phase": phase,
                    "nodes": sorted(minority),
                    "start": time.time(),
                }
                fault_entries.append(partition_entry)
            if drawn["kill"]:
                if point == "before_side_effect_call" and not workers[victim].plan["effects"]:
                    point = "after_intent_1"  # the victim calls no API this time: crash mid-intents instead
                if point == "after_some_commits":
                    stop_after = rng.randrange(0, len(names))
                else:
                    workers[victim].plan["die_at"] = point
                fault_entries.append(
                    {
                        "fault": "kill",
                        "g": g,
                        "phase": phase,
                        "node": victim,
                        "point": point,
                        **({"commits": stop_after} if stop_after is not None else {}),
                    }
                )
            result = driver.run(g, phase, trace_id=f"sim-{seed}-{g}-{phase}", stop_after_commits=stop_after)
            report.transitions += 1
            if partition_entry is not None:
                for n in minority:
                    _set_partition(roots[n], n, names, False)
                partition_entry["end"] = time.time()
            damage = None
            if result.outcome == "committed" and drawn["torn"]:
                damage = {"fault": "torn", "g": g, "phase": phase, "node": victim, **_damage_tail(roots[victim], rng)}
            elif result.outcome == "committed" and drawn["bitflip"]:
                damage = {"fault": "bitflip", "g": g, "phase": phase, "node": victim, **_flip_bit(roots[victim], rng)}
            if damage is not None:
                fault_entries.append(damage)
            for entry in fault_entries:
                log_fault(path, seed=seed, **entry)
                report.faults.append(entry)
            if result.outcome == "committed" and damage is None:
                report.committed += 1
                report.last = (g, phase)
                continue
            owed = any(workers[n].plan["effects"] for n in result.prepared)
            if result.outcome == "aborted" and damage is None and not owed and all(w.alive for w in workers.values()):
                continue  # every participant rolled back cleanly (e.g. a partitioned minority refused): retry
            report.stopped_at = (g, phase)
            failed = "; ".join(result.failed[n] for n in sorted(result.failed)) or "coordinator stopped"
            report.reason = damage["fault"] if damage else f"{result.outcome}: {failed}"
            if owed and result.outcome == "aborted" and not damage:
                report.reason += " (side effects to compensate)"
            break
    finally:
        if report.stopped_at is not None:
            for w in workers.values():
                w.kill()  # a crashed cluster: nothing may tidy up after the fault
        for w in workers.values():
            w.close()
        if report.stopped_at is None:
            cloud.set_faults({})  # a stopped run leaves them: a failing compensator fails for recovery too
    return report
