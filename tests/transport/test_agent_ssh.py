"""The node agent gossiping over SSH with the fixture sshd: pinned host keys, one kept-open session
per peer (``haios node gossip-serve`` at the far end), no process started per round."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.sshd import Sshd

from haios import controlfile
from haios.ops.agent import Agent
from haios.sim.simulator import SshLayout, sim_init
from haios.timefmt import parse_utc
from haios.transport.ssh import SshExchange


@pytest.fixture
def ssh_nodes(tmp_path: Path, ssh_env: Sshd) -> Path:
    return sim_init(tmp_path / "cluster", 3, ssh=SshLayout("127.0.0.1", ssh_env.port, "root", ssh_env.fingerprint))


def test_the_agent_gossips_over_kept_open_ssh_sessions(ssh_nodes: Path) -> None:
    roots = {n: ssh_nodes / "nodes" / n for n in ("node-1", "node-2", "node-3")}
    lines: list[str] = []
    agent = Agent(roots["node-1"], log=lines.append, clock=time.time)
    try:
        start = time.time()
        body = agent.round()
        assert body["partition_status"] == "NORMAL", lines
        assert set(body["peers"]) == {"node-2", "node-3"} and all(
            parse_utc(w) >= start - 1 for w in body["peers"].values()
        )
        first = {p: e for p, e in agent.exchanges.items()}
        assert set(first) == {"node-2", "node-3"} and all(isinstance(e, SshExchange) for e in first.values())
        channels = {p: e._stream[0] for p, e in first.items() if isinstance(e, SshExchange) and e._stream}
        agent.round()
        again = {p: e._stream[0] for p, e in agent.exchanges.items() if isinstance(e, SshExchange) and e._stream}
        assert again == channels  # the same sessions: nothing was started on the peers for the second round
        # the far end learned of node-1 from its requests, in its own gossip file
        heard = controlfile.read_mapping(roots["node-2"] / "gossip")[0]
        assert heard["seqs"]["node-1"] == 2 and heard["peers"]["node-1"] is not None
    finally:
        agent.close()
    assert lines == ["node-1: NORMAL"]  # its status, said once; no peer was ever out of reach


def test_a_peer_whose_host_key_is_not_the_pinned_one_is_not_heard(ssh_nodes: Path) -> None:
    root = ssh_nodes / "nodes/node-1"
    policy, version = controlfile.read_mapping(root / "policy")
    policy["peers"]["node-3"]["host_key"] = "SHA256:" + "A" * 43  # not the fixture's key
    controlfile.write_mapping(root / "policy", policy, expected_version=version)
    lines: list[str] = []
    agent = Agent(root, log=lines.append, clock=time.time)
    try:
        body = agent.round()
    finally:
        agent.close()
    assert body["peers"]["node-3"] is None and body["peers"]["node-2"] is not None
    refused = [line for line in lines if "cannot reach node-3" in line]
    assert len(refused) == 1 and "host key" in refused[0].lower(), lines
