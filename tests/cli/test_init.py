"""``haios init``: the scaffolded repo, refusals and output."""

from __future__ import annotations

import json
from pathlib import Path

import git
from helpers import Invoke

from haios import controlfile, validate_repo


def test_init_creates_valid_repo_with_one_commit(cli: Invoke, tmp_path: Path) -> None:
    result = cli("init", tmp_path / "demo-repo", "--nodes", "3")
    assert result.exit_code == 0, result.output
    with git.Repo(tmp_path / "demo-repo") as repo:
        commits = list(repo.iter_commits())
        assert len(commits) == 1
        assert commits[0].message.strip() == "haios init: cluster demo-repo with 3 nodes (local transport)"
        assert result.stdout == (
            f"Created {tmp_path / 'demo-repo'}: cluster demo-repo, 3 nodes (local transport, replication "
            f"sync-majority), commit {commits[0].hexsha[:12]}\n"
        )
        assert result.stderr == f"next: haios --repo {tmp_path / 'demo-repo'} validate\n"
        assert not repo.is_dirty(untracked_files=True)
    assert validate_repo(tmp_path / "demo-repo").ok


def test_init_then_validate_exits_zero(cli: Invoke, tmp_path: Path) -> None:
    assert cli("init", tmp_path / "demo-repo", "--nodes", "3").exit_code == 0
    result = cli("--repo", tmp_path / "demo-repo", "validate")
    assert result.exit_code == 0
    assert result.stdout == f"{tmp_path / 'demo-repo'}: valid (9 files)\n"


def test_fresh_init_passes_doctor_with_what_to_do_next(cli: Invoke, tmp_path: Path) -> None:
    """A repo just made by init: doctor exits 0, says healthy, and lists, as INFO, only what the
    user must do next (start the heartbeats) — no warning about rates nobody converts with."""
    repo = tmp_path / "repo"
    assert cli("init", repo, "--nodes", "2").exit_code == 0
    result = cli("--repo", repo, "doctor")
    assert result.exit_code == 0, result.stdout
    assert result.stdout.rstrip().endswith(f"{repo}: healthy (2 nodes, 2 notes)")
    for node in ("node-1", "node-2"):
        assert f"INFO heartbeat_never {node}: {node} has never sent a heartbeat: start its heartbeat" in result.stdout
        assert f"fix: haios --repo {repo} node heartbeat {node} --every 15s" in result.stdout
    data = json.loads(cli("--repo", repo, "doctor", "-o", "json").stdout)
    assert data["healthy"] is True and {f["severity"] for f in data["findings"]} == {"info"}
    assert "fx_" not in result.stdout and "None" not in result.stdout
    # the fix runs as printed: after one beat each, nothing is left to say
    assert cli("--repo", repo, "node", "heartbeat", "--count", "1").exit_code == 0
    after = cli("--repo", repo, "doctor")
    assert after.exit_code == 0 and after.stdout.rstrip().endswith(f"{repo}: healthy (2 nodes)")


def test_init_layout_and_node_roots(cli: Invoke, tmp_path: Path) -> None:
    assert cli("init", tmp_path / "r", "--nodes", "2", "--cluster", "prod-eu").exit_code == 0
    root = tmp_path / "r"
    for rel in [
        "haios.yaml",
        "desired/state.yaml",
        "policies/thresholds.yaml",
        "policies/budget.yaml",
        "policies/fx.yaml",
        "policies/rbac.yaml",
        "playbooks/notify.yaml",
        "overrides/.gitkeep",
        "status/.gitkeep",
        ".haios/schemas/cluster.schema.json",
    ]:
        assert (root / rel).is_file(), rel
    assert (
        (root / "haios.yaml")
        .read_text()
        .startswith("# yaml-language-server: $schema=.haios/schemas/cluster.schema.json\n")
    )
    assert (
        (root / "policies/fx.yaml")
        .read_text()
        .startswith("# yaml-language-server: $schema=../.haios/schemas/fx.schema.json\n")
    )
    for node in ("node-1", "node-2"):
        node_root = root / "nodes" / node
        assert sorted(p.name for p in node_root.iterdir()) == [
            "data",
            "fence",
            "policy",
            "replicas",
            "snapshots",
            "state.txt",
            "wal",
        ]
        state, version = controlfile.read_mapping(node_root / "state.txt")
        assert state == {"node": node, "g": 0, "ph": None, "status": "READY"} and version == 1
        policy, _ = controlfile.read_mapping(node_root / "policy")
        assert policy["cluster"] == "prod-eu" and policy["membership"] == {"node-1": "active", "node-2": "active"}
    assert "nodes/" in (root / ".gitignore").read_text().splitlines()


def test_init_control_files_follow_their_schemas(cli: Invoke, tmp_path: Path) -> None:
    from jsonschema import Draft202012Validator

    from haios.node.root import CONTROL_FILES
    from haios.resources import schema

    assert cli("init", tmp_path / "r", "--nodes", "1").exit_code == 0
    node_root = tmp_path / "r/nodes/node-1"
    for name in ("state.txt", "policy", "fence"):
        body, _ = controlfile.read_mapping(node_root / name)
        Draft202012Validator(schema(CONTROL_FILES[name])).validate(body)


def test_init_ssh_transport_has_no_node_roots(cli: Invoke, tmp_path: Path) -> None:
    result = cli("init", tmp_path / "r", "--transport", "ssh", "--nodes", "2")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "r/nodes").exists()
    assert "transport: ssh" in (tmp_path / "r/haios.yaml").read_text()
    assert validate_repo(tmp_path / "r").ok


def test_init_refuses_non_empty_dir(cli: Invoke, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = cli("init", target)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {target}: directory is not empty (hint: choose another directory, or pass --force to write into it)\n"
    )
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_init_force_keeps_existing_node_state(cli: Invoke, tmp_path: Path) -> None:
    target = tmp_path / "r"
    assert cli("init", target, "--nodes", "2").exit_code == 0
    state = target / "nodes/node-1/state.txt"
    controlfile.write_mapping(state, {"node": "node-1", "g": 7, "ph": "IDLE", "status": "READY"}, expected_version=1)
    result = cli("init", target, "--nodes", "3", "--force")
    assert result.exit_code == 0, result.output
    assert "kept existing node roots: node-1, node-2" in result.stderr
    assert controlfile.read_mapping(state)[0]["g"] == 7
    assert (target / "nodes/node-3/state.txt").exists()
    with git.Repo(target) as repo:
        assert len(list(repo.iter_commits())) == 2


def test_init_into_existing_empty_dir(cli: Invoke, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert cli("init", tmp_path / "empty", "--nodes", "1").exit_code == 0
    assert (tmp_path / "empty/haios.yaml").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_init_bad_cluster_name(cli: Invoke, tmp_path: Path) -> None:
    result = cli("init", tmp_path / "r", "--cluster", "Bad_Name")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: invalid cluster name 'Bad_Name' (hint: use 1-63 lowercase letters, digits and '-', "
        "not starting or ending with '-')\n"
    )
    assert not (tmp_path / "r").exists()


def test_init_bad_transport(cli: Invoke, tmp_path: Path) -> None:
    result = cli("init", tmp_path / "r", "--transport", "pigeon")
    assert result.exit_code == 1
    assert result.stderr == "error: --transport must be local or ssh (got 'pigeon') (hint: see 'haios init --help')\n"


def test_init_zero_nodes_is_usage_error(cli: Invoke, tmp_path: Path) -> None:
    result = cli("init", tmp_path / "r", "--nodes", "0")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: Invalid value for '--nodes': Input should be greater than or equal to 1 "
        "(hint: see 'haios init --help')\n"
    )


def test_init_json_output(cli: Invoke, tmp_path: Path) -> None:
    result = cli("init", tmp_path / "r", "--nodes", "2", "--output", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["cluster"] == "r" and data["nodes"] == ["node-1", "node-2"] and len(data["commit"]) == 40
    assert data["node_roots_created"] == ["node-1", "node-2"]


def test_init_failure_leaves_nothing_behind(cli: Invoke, tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    from haios.errors import RepoError
    from haios.ops import init as scaffold

    def broken_git(path: Path, message: str) -> str:
        raise RepoError(f"{path}: git failed: simulated")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scaffold, "init_and_commit", broken_git)
        result = cli("init", tmp_path / "r")
    assert result.exit_code == 1
    assert "git failed: simulated" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
