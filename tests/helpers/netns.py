"""Network namespaces for the tests that cut real links: each with its own address and its own sshd."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from haios.sim.simulator import SshLayout, sim_init

from . import subprocs
from .sshd import keygen, sshd_binary


def ip(*args: str) -> None:
    subprocs.run(["ip", *args], check=True, capture_output=True, timeout=30)


def cannot_make_namespaces() -> str | None:
    """Why this machine cannot give a test namespaces with sshd in them (None: it can)."""
    if os.geteuid() != 0 or sshd_binary() is None:
        return "needs root and OpenSSH sshd"
    probe = f"hzp{uuid.uuid4().hex[:6]}"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        return f"network namespaces cannot be created here ({exc})"
    ip("netns", "del", probe)
    return None


def need_namespaces() -> None:
    """Skip the test, saying why, when :func:`cannot_make_namespaces`."""
    why = cannot_make_namespaces()
    if why is not None:
        pytest.skip(why)


def make_keys(keys: Path) -> Path:
    """A host key every sshd of the test presents, and the client key they all accept, in ``keys``."""
    keys.mkdir()
    keygen(keys / "host", "haios-test-host")
    keygen(keys / "client", "haios-test-client")
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    return keys


def start_sshd(namespace: str, address: str, keys: Path, work: Path, name: str) -> subprocess.Popen[bytes]:
    """An sshd listening on ``address``:22 inside ``namespace``, with the host key and authorized keys
    in ``keys`` (``host``, ``authorized_keys``); its config, pid file and log in ``work``."""
    config = work / f"sshd-{name}.conf"
    config.write_text(
        f"ListenAddress {address}\nPort 22\nHostKey {keys / 'host'}\nPidFile {work / f'sshd-{name}.pid'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nMaxStartups 100\n"
        "Subsystem sftp internal-sftp\nSetEnv SHLVL=1\nLogLevel ERROR\n"
    )
    if not os.path.isdir("/run/sshd"):
        subprocs.run(["mkdir", "-p", "/run/sshd"], check=True)
    with open(work / f"sshd-{name}.log", "ab") as log:  # the server keeps its own descriptor
        return subprocs.spawn(
            ["ip", "netns", "exec", namespace, sshd_binary() or "sshd", "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=log,
        )


def stop_sshds(servers: list[subprocess.Popen[bytes]]) -> None:
    """Every server and its sessions (those over a cut link would wait out TCP's timeouts: killed)."""
    for server in servers:
        subprocs.kill_descendants(server.pid)
        server.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def sim_cluster_at(directory: Path, addresses: dict[str, str], fingerprint: str) -> Path:
    """A simulated cluster whose nodes haios reaches over SSH, each at its own address (port 22, user
    root, the host key ``fingerprint``); haios.yaml edited, not committed."""
    made = sim_init(directory, len(addresses), ssh=SshLayout("0.0.0.0", 22, "root", fingerprint))
    config = made / "haios.yaml"
    text = config.read_text()
    for node, address in addresses.items():
        start = text.index(f"  - name: {node}\n")
        text = text[:start] + text[start:].replace("address: 0.0.0.0", f"address: {address}", 1)
    config.write_text(text)
    return made
