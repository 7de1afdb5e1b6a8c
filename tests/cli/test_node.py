"""``haios node``: a shell-based executor runs a whole phase, one command per step."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import Invoke

from haios import controlfile
from haios.wal import RecordType, read_records


def _json(out: str) -> dict[str, object]:
    return json.loads(out)  # type: ignore[no-any-return]


def test_node_commands_run_a_phase(cli: Invoke, repo: Path, tmp_path: Path) -> None:
    root = repo / "nodes/node-1"
    common = ["--g", "1", "--phase", "ANALYZE"]
    out = _json(cli("node", "begin", root, *common, "--participants", "node-1,node-2", "--trace-id", "t-9").stdout)
    assert out == {
        "node": "node-1",
        "g": 1,
        "phase": "ANALYZE",
        "trace_id": "t-9",
        "snapshot": "1-ANALYZE",
        "lamport": 1,
    }
    (tmp_path / "content").write_bytes(b"v=2\n")
    assert (
        _json(cli("node", "intent", root, *common, "app/conf", "--content-file", tmp_path / "content").stdout)["seq"]
        == 1
    )
    result = cli(
        "node",
        "side-effect",
        root,
        *common,
        "--key",
        "vm-1",
        "--kind",
        "notify",
        "--compensator",
        "notify",
        "--params",
        '{"to": "ops"}',
    )
    assert result.exit_code == 0, result.output
    assert cli("node", "side-effect", root, *common, "--key", "vm-1", "--done", '{"ok": true}').exit_code == 0
    assert _json(cli("node", "step", root, *common, "fetch").stdout)["steps"] == {"fetch": "ok"}
    assert _json(cli("node", "prepare", root, *common).stdout)["intents"] == 1
    assert _json(cli("node", "commit", root, *common).stdout)["committed"] is True
    assert (root / "data/app/conf").read_bytes() == b"v=2\n"
    assert [r.type for r in read_records(root / "wal")] == [
        RecordType.BEGIN_PHASE,
        RecordType.INTENT,
        RecordType.SIDE_EFFECT,
        RecordType.SIDE_EFFECT_DONE,
        RecordType.STEP,
        RecordType.PREPARE,
        RecordType.COMMIT_PHASE,
    ]


def test_node_begin_out_of_order_is_exit_1(cli: Invoke, repo: Path) -> None:
    result = cli("node", "begin", repo / "nodes/node-1", "--g", "1", "--phase", "IDLE", "--participants", "node-1")
    assert result.exit_code == 1 and "would break the phase order" in result.stderr


def test_node_abort_restores(cli: Invoke, repo: Path, tmp_path: Path) -> None:
    root = repo / "nodes/node-1"
    common = ["--g", "1", "--phase", "ANALYZE"]
    cli("node", "begin", root, *common, "--participants", "node-1")
    cli("node", "intent", root, *common, "x", "--content-file", "-")
    cli("node", "prepare", root, *common)
    assert (root / "data/x").exists()
    out = _json(cli("node", "abort", root, *common, "--reason", "bad").stdout)
    assert out["aborted"] is True and not (root / "data/x").exists()


def test_node_intent_needs_exactly_one_source(cli: Invoke, repo: Path) -> None:
    root = repo / "nodes/node-1"
    cli("node", "begin", root, "--g", "1", "--phase", "ANALYZE", "--participants", "node-1")
    result = cli("node", "intent", root, "--g", "1", "--phase", "ANALYZE", "x")
    assert result.exit_code == 1 and "exactly one of --content-file and --delete" in result.stderr


def test_node_heartbeat_for_local_nodes(cli: Invoke, repo: Path) -> None:
    result = cli("--repo", repo, "node", "heartbeat")
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["node"] for x in lines] == ["node-1", "node-2", "node-3"]
    assert all(x["partition_status"] == "NORMAL" and x["seq"] == 1 for x in lines)
    assert controlfile.read_mapping(repo / "nodes/node-2/gossip")[0]["partition_status"] == "NORMAL"


def test_node_heartbeat_without_local_nodes_names_the_agent(cli: Invoke, tmp_path: Path) -> None:
    repo = tmp_path / "remote"
    assert cli("init", repo, "--nodes", "2", "--transport", "ssh").exit_code == 0
    result = cli("--repo", repo, "node", "heartbeat")
    assert result.exit_code == 1 and "names no local node" in result.stderr and "haios agent ROOT" in result.stderr
