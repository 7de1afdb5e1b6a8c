"""WAL replication over SSH: every peer reached through the fixture sshd, its replicas kept by a
long-lived 'haios node replica-serve' session; restore over SSH too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import Invoke
from helpers.sshd import Sshd

from haios.errors import QuorumError, TransportError
from haios.node import Node
from haios.sim.check import sim_check
from haios.sim.simulator import SshLayout, sim_init, sim_run
from haios.wal import RecordType, read_records


@pytest.fixture
def ssh_replicated(tmp_path: Path, ssh_env: Sshd) -> Path:
    directory = sim_init(
        tmp_path / "cluster",
        3,
        ssh=SshLayout("127.0.0.1", ssh_env.port, "root", ssh_env.fingerprint),
        replication=True,
    )
    assert sim_run(directory, iterations=1, seed=5, faults={}).committed == 5
    return directory


def _records(wal: Path) -> list[tuple[int, int]]:
    return [(r.lamport, r.crc) for r in read_records(wal)]


def test_replicas_over_ssh_and_restore_through_rejoin(ssh_replicated: Path, cli: Invoke) -> None:
    policy = Node(ssh_replicated / "nodes/node-1").policy
    assert {p["transport"] for p in policy["replication"]["peers"].values()} == {"ssh"}
    nodes = ssh_replicated / "nodes"
    for origin in ("node-1", "node-2", "node-3"):
        for peer in {"node-1", "node-2", "node-3"} - {origin}:
            assert _records(nodes / peer / "replicas" / origin) == _records(nodes / origin / "wal")
    before = _records(nodes / "node-3/wal")
    shutil.rmtree(nodes / "node-3/wal")
    result = cli("--repo", ssh_replicated, "-o", "json", "node", "rejoin", "node-3")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["restored"]["restored"] is True
    assert _records(nodes / "node-3/wal") == before
    assert sim_check(ssh_replicated) == []
    shown = cli("--repo", ssh_replicated, "-o", "json", "node", "replication")
    assert shown.exit_code == 0, shown.output
    assert [n["quorum"] for n in json.loads(shown.stdout)["nodes"]] == [2, 2, 2]


@pytest.mark.service  # starts an sshd of its own (it kills it)
def test_ssh_peers_down_refuse_durable_appends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.sshd import make_sshd

    own = make_sshd(tmp_path / "own-sshd")  # this test kills its server
    try:
        monkeypatch.setenv("HAIOS_SSH_IDENTITY", str(own.client_key))
        monkeypatch.setenv("HAIOS_REMOTE_COMMAND", own.remote_command)
        layout = SshLayout("127.0.0.1", own.port, "root", own.fingerprint)
        cluster = sim_init(tmp_path / "cluster", 3, ssh=layout, replication=True)
        node = Node(cluster / "nodes/node-1")
        try:
            node.append(0, "ANALYZE", "t", RecordType.EVENT, {"name": "test.tick"}, durable=True)
            own.kill_all()  # every peer is behind this one sshd: all of them are gone at once
            with pytest.raises((QuorumError, TransportError)):
                node.append(0, "ANALYZE", "t", RecordType.EVENT, {"name": "test.tick"}, durable=True)
            last = _records(cluster / "nodes/node-1/wal")[-1]
            with pytest.raises(QuorumError) as refused:
                node.append(0, "ANALYZE", "t", RecordType.EVENT, {"name": "test.tick"}, durable=True)
            assert "1 of 2 acknowledgements" in refused.value.message
            assert _records(cluster / "nodes/node-1/wal")[-1] == last  # refused before it was written
        finally:
            node.close()
    finally:
        own.stop()
