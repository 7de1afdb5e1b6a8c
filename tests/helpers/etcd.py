"""A real etcd cluster (Debian's etcd-server) on free loopback ports, for the etcd backend's tests."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from . import subprocs
from .sshd import free_ports


@dataclass
class EtcdCluster:
    directory: Path
    size: int = 3
    clients: list[int] = field(default_factory=list)
    peers: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    logs: list[BinaryIO] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.clients]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start the members and wait until each says it is healthy. A port another process took
        between choosing it and binding it is chosen again (at most three times)."""
        for attempt in range(3):
            if self._start(attempt, timeout):
                return self
            self.stop()
        raise AssertionError("etcd: every attempt lost a port to another process")

    def _start(self, attempt: int, timeout: float) -> bool:
        binary = shutil.which("etcd")
        assert binary, "etcd is missing: tests/system-deps.sh installs Debian's etcd-server"
        ports = free_ports(2 * self.size)
        self.clients, self.peers = ports[: self.size], ports[self.size :]
        initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peers))
        self.procs, self.logs = [], []
        for i in range(self.size):
            data = self.directory / f"try{attempt}" / f"m{i}"
            log = (self.directory / f"m{i}.log").open("wb")
            self.logs.append(log)
            cmd = [
                binary,
                f"--name=m{i}",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{self.clients[i]}",
                f"--advertise-client-urls=http://127.0.0.1:{self.clients[i]}",
                f"--listen-peer-urls=http://127.0.0.1:{self.peers[i]}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peers[i]}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token=haios-tests-{self.peers[0]}",
                "--heartbeat-interval=50",
                "--election-timeout=500",
            ]
            self.procs.append(subprocs.spawn(cmd, stdout=log, stderr=log))
        deadline = time.monotonic() + timeout
        while not all(self.healthy(i) for i in range(self.size)):
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    text = (self.directory / f"m{i}.log").read_text(errors="replace")
                    if "address already in use" in text:
                        return False
                    raise AssertionError(f"etcd member m{i} exited: {text[-2000:]}")
            assert time.monotonic() < deadline, "the etcd cluster did not become healthy"
            time.sleep(0.1)
        return True

    def healthy(self, i: int) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoints[i]}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            self.procs[i] = None

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)
        for log in self.logs:
            log.close()
