"""A real OpenSSH server on a free loopback port, with its own host key, config and client key.

Started non-daemonised (``sshd -D -e -f CONFIG``) and stopped by the PID it was started with. The
server's environment sets ``SHLVL=1`` so that root's shell start-up stays out of every command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from haios.transport.ssh import fingerprint

from . import subprocs

SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def sshd_binary() -> str | None:
    found = shutil.which("sshd")
    return found or next((p for p in SSHD_PATHS if os.path.exists(p)), None)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (all held open while they are chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def keygen(path: Path, comment: str) -> None:
    subprocs.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def host_fingerprint(pub: Path) -> str:
    import base64

    return fingerprint(base64.b64decode(pub.read_text().split()[1]))


@dataclass
class Sshd:
    directory: Path
    port: int
    host_key: Path  # private; .pub beside it
    client_key: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    service: bool = False  # outlives a test: stopped at the end of the session

    @property
    def fingerprint(self) -> str:
        return host_fingerprint(self.host_key.with_suffix(".pub"))

    @property
    def remote_command(self) -> str:
        """How the nodes run haios: this interpreter, whatever the server's PATH says."""
        return f"{sys.executable} -m haios"

    def known_hosts_line(self) -> str:
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def start(self) -> None:
        binary = sshd_binary()
        assert binary is not None
        if not os.path.isdir("/run/sshd"):  # sshd refuses to start without it (privilege separation)
            subprocs.run(["mkdir", "-p", "/run/sshd"], check=True)
        log = open(self.directory / "sshd.log", "ab")  # noqa: SIM115 - the server keeps it open
        self.proc = subprocs.spawn(
            [binary, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log, service=self.service
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.directory / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on port {self.port}")

    def stop(self) -> None:
        """SIGTERM the listener; the sessions of clients that never disconnected (a link the test
        cut, a client it killed) are SIGKILLed, as they would outlive it."""
        if self.proc is None:
            return
        subprocs.kill_descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill_all(self) -> None:
        """SIGKILL the listener and every session it forked (a crashed server)."""
        if self.proc is None:
            return
        subprocs.kill_descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None


def make_sshd(directory: Path, *, service: bool = False) -> Sshd:
    """A started server in ``directory``; ``service``: shared by the session's tests."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key, client_key = directory / "host_ed25519", directory / "client_ed25519"
    keygen(host_key, "haios-test-host")
    keygen(client_key, "haios-test-client")
    authorized = directory / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    config = directory / "sshd_config"
    for _ in range(3):  # a port another process took between choosing and binding it: choose again
        port = free_port()
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {port}",
                    f"HostKey {host_key}",
                    f"PidFile {directory / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "MaxStartups 200",
                    "MaxSessions 50",
                    "Subsystem sftp internal-sftp",
                    # the nodes' own haios reaches their replica peers with this key, as a node's
                    # service account would with its own (WAL replication, restore)
                    f'SetEnv SHLVL=1 HAIOS_SSH_IDENTITY={client_key} "HAIOS_REMOTE_COMMAND={sys.executable} -m haios"',
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        sshd = Sshd(directory, port, host_key, client_key, config, service=service)
        try:
            sshd.start()
        except RuntimeError:
            sshd.stop()
            if "Address already in use" not in (directory / "sshd.log").read_text(errors="replace"):
                raise
            continue
        return sshd
    raise RuntimeError(f"sshd in {directory}: every port chosen was taken by another process first")
