"""A real OpenSSH server for the SSH transport's tests (one per session; tests that break it start
their own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.sshd import Sshd, make_sshd, sshd_binary


def _need_sshd() -> None:
    if sshd_binary() is None:
        # 'make test' installs openssh-server (tests/system-deps.sh); without root it cannot
        pytest.skip("OpenSSH sshd is not installed (Debian package openssh-server)")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    _need_sshd()
    server = make_sshd(tmp_path_factory.mktemp("sshd"), service=True)
    yield server
    server.stop()


@pytest.fixture
def ssh_env(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Sshd:
    """The client side: haios's key and the nodes' haios command, as a cron job would set them."""
    monkeypatch.setenv("HAIOS_SSH_IDENTITY", str(sshd.client_key))
    monkeypatch.setenv("HAIOS_REMOTE_COMMAND", sshd.remote_command)
    return sshd
