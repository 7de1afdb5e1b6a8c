"""The desired state reaches the nodes: every reconcile pushes the compiled policy, fenced, where its
digest changed, and the node enforces it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import Invoke, subprocs
from helpers.cluster import git, head

from haios import controlfile
from haios.config import load_repo
from haios.config.model import policy_digest
from haios.errors import BarrierError, FencedError, UsageError
from haios.node import Node, init_node_root, recover
from haios.ops import reconcile
from haios.ops.observe import policy_digest_line


def _commit(cluster: Path, old: str, new: str, message: str) -> None:
    state = cluster / "desired/state.yaml"
    text = state.read_text()
    assert old in text
    state.write_text(text.replace(old, new))
    git(cluster, "commit", "-qam", message)


def _changed_files(cluster: Path, commit: str) -> list[str]:
    done = subprocs.run(
        ["git", "show", "--name-only", "--format=", commit], cwd=cluster, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def _digest(root: Path) -> str | None:
    return policy_digest_line(controlfile.read(root / "policy").body)


def test_a_committed_freeze_reaches_every_node_and_holds(cluster: Path, cli: Invoke) -> None:
    _commit(cluster, "max_g: null", "max_g: 1", "freeze at g=1")
    want = load_repo(cluster).compile_policy()["digest"]
    planned = cli("--repo", cluster, "-o", "json", "plan")
    data = json.loads(planned.stdout)
    assert planned.exit_code == 2  # a policy to push is work pending
    assert [(p["node"], p["want"]) for p in data["policy"]] == [(n, want) for n in ("node-1", "node-2", "node-3")]
    before = head(cluster)
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 0, result.output
    assert "policy pushed to node-1" in result.stdout
    assert _changed_files(cluster, head(cluster)) == ["status/cluster.yaml", "status/policy.yaml"]
    assert head(cluster) != before
    for n in ("node-1", "node-2", "node-3"):
        assert _digest(cluster / "nodes" / n) == want
        with pytest.raises(BarrierError, match="beyond max_g=1"):
            Node(cluster / "nodes" / n).begin(2, "ANALYZE", participants=["node-1", "node-2", "node-3"])
    doctor = json.loads(cli("--repo", cluster, "-o", "json", "doctor").stdout)
    assert not [f for f in doctor["findings"] if f["kind"] == "policy_stale"]
    again = head(cluster)
    assert cli("--repo", cluster, "reconcile").exit_code == 0
    assert head(cluster) == again  # nothing new to push, nothing committed


def test_a_suspension_is_pushed_though_reconcile_changes_nothing_else(cluster: Path, cli: Invoke) -> None:
    _commit(cluster, "suspend: false", "suspend: true", "suspend")
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 0, result.output
    assert "suspend: plan only, nothing changed but the policy, pushed to 3 member(s)" in result.stdout
    assert _changed_files(cluster, head(cluster)) == ["status/policy.yaml"]
    with pytest.raises(BarrierError, match="suspends the cluster"):
        Node(cluster / "nodes/node-2").begin(2, "ANALYZE", participants=["node-1", "node-2", "node-3"])


def test_doctor_names_a_node_whose_policy_is_older(cluster: Path, cli: Invoke) -> None:
    thresholds = cluster / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("    ANALYZE: 10ms", "    ANALYZE: 20ms"))
    git(cluster, "commit", "-qam", "a longer ANALYZE prior")
    doctor = json.loads(cli("--repo", cluster, "-o", "json", "doctor").stdout)
    stale = [f for f in doctor["findings"] if f["kind"] == "policy_stale"]
    assert [f["nodes"] for f in stale] == [["node-1"], ["node-2"], ["node-3"]]
    assert stale[0]["fix"].startswith("haios") and "reconcile" in stale[0]["fix"]
    assert cli("--repo", cluster, "reconcile").exit_code == 0
    doctor = json.loads(cli("--repo", cluster, "-o", "json", "doctor").stdout)
    assert not [f for f in doctor["findings"] if f["kind"] == "policy_stale"]


def test_an_unreachable_node_gets_the_policy_on_a_later_run(cluster: Path) -> None:
    _commit(cluster, "max_g: null", "max_g: 5", "freeze at g=5")
    away = cluster / "node-3-away"
    shutil.move(cluster / "nodes/node-3", away)
    first = reconcile(cluster)
    assert {p["node"]: p["outcome"] for p in first.policy} == {"node-1": "pushed", "node-2": "pushed"}
    shutil.move(away, cluster / "nodes/node-3")
    second = reconcile(cluster)
    assert [(p["node"], p["outcome"]) for p in second.policy] == [("node-3", "pushed")]
    assert second.exit_code() == 0
    want = load_repo(cluster).compile_policy()["digest"]
    assert {_digest(cluster / "nodes" / n) for n in ("node-1", "node-2", "node-3")} == {want}


def test_the_node_refuses_a_stale_forged_or_foreign_policy(tmp_path: Path, cluster: Path) -> None:
    root = tmp_path / "n1"
    policy = load_repo(cluster).compile_policy()
    init_node_root(root, "n1", {"cluster": policy["cluster"], "max_g": None})
    assert recover.policy(root, token=5, policy=policy)["outcome"] == "pushed"
    version = controlfile.current_version(root / "policy")
    assert recover.policy(root, token=5, policy=policy)["outcome"] == "already current"
    assert controlfile.current_version(root / "policy") == version  # nothing rewritten
    with pytest.raises(FencedError, match="token 5 was accepted"):
        recover.policy(root, token=4, policy={**policy, "max_g": 3, "digest": _redigest(policy, max_g=3)})
    with pytest.raises(UsageError, match="digest is not that of its content"):
        recover.policy(root, token=6, policy={**policy, "max_g": 3})
    with pytest.raises(UsageError, match="not one haios compiles"):
        recover.policy(root, token=6, policy={**policy, "max_g": "never"})
    foreign = {**policy, "cluster": "other"}
    with pytest.raises(UsageError, match="belongs to cluster"):
        recover.policy(root, token=6, policy={**foreign, "digest": _redigest(foreign)})
    assert _digest(root) == policy["digest"]


def _redigest(policy: dict[str, object], **changes: object) -> str:
    return policy_digest({**policy, **changes})


def test_the_digest_line_is_found_without_parsing_the_policy() -> None:
    digest = "0123456789" * 6 + "abcd"
    assert policy_digest_line(f"digest: '{digest}'\ncluster: c\n".encode()) == digest
    assert policy_digest_line(f"digest: {digest}\n".encode()) == digest
    assert policy_digest_line(b"cluster: c\ndigest: x\n") is None  # an older haios's policy: no digest first
    assert policy_digest_line(f'{{\n"digest": "{digest}",\n"cluster": "c"\n}}\n'.encode()) == digest  # JSON style
    assert policy_digest_line(f'{{\n"cluster": "c",\n"digest": "{digest}"\n}}\n'.encode()) is None
    assert policy_digest_line(f"digest: {digest}x\n".encode()) is None
