"""The desired state that acts is the committed one: uncommitted edits are refused (unless
--allow-dirty), a detached HEAD gets no audit commit on no branch, and audit commits a rejected
push left behind are pushed by the next run that may push."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import Invoke, subprocs
from helpers.cluster import git, head, plant


def test_uncommitted_desired_state_is_refused_unless_allowed(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    state = cluster / "desired/state.yaml"
    state.write_text(state.read_text() + "# an edit nobody committed\n")
    before = head(cluster)
    refused = cli("--repo", cluster, "reconcile")
    assert refused.exit_code == 1
    assert "uncommitted edits to the desired state (desired/state.yaml)" in refused.stderr
    assert f"git -C {cluster} commit -a" in refused.stderr and "--allow-dirty" in refused.stderr
    assert head(cluster) == before  # nothing acted, nothing committed
    plan = cli("--repo", cluster, "plan")
    assert plan.exit_code == 2  # plan shows what it reads, and says so
    assert "warning: uncommitted edits to the desired state (desired/state.yaml)" in plan.stderr
    assert json.loads(cli("--repo", cluster, "plan", "-o", "json").stdout)["uncommitted"] == ["desired/state.yaml"]
    allowed = cli("--repo", cluster, "reconcile", "--allow-dirty")
    assert allowed.exit_code == 0, allowed.output
    assert "warning: acted on uncommitted edits to the desired state: desired/state.yaml" in allowed.stderr
    assert head(cluster) != before


def test_a_detached_head_gets_no_audit_commit(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    git(cluster, "checkout", "--quiet", "--detach")
    before = head(cluster)
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 1 and "HEAD is detached: the audit commit would be on no branch" in result.stderr
    assert head(cluster) == before
    assert json.loads(cli("--repo", cluster, "plan", "-o", "json").stdout)["exit_code"] == 2  # plan still shows it


def test_a_rejected_push_is_owed_and_paid_by_the_next_run(cluster: Path, tmp_path: Path, cli: Invoke) -> None:
    remote = tmp_path / "remote.git"
    subprocs.run(["git", "init", "--quiet", "--bare", "-b", "main", str(remote)], check=True)
    git(cluster, "remote", "add", "origin", str(remote))
    git(cluster, "push", "--quiet", "-u", "origin", "HEAD:main")
    hook = remote / "hooks/pre-receive"
    hook.write_text("#!/bin/sh\necho 'closed for maintenance' >&2\nexit 1\n")
    hook.chmod(0o755)
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    rejected = cli("--repo", cluster, "reconcile", "--push")
    assert rejected.exit_code == 1 and "git push failed" in rejected.stderr
    owed = head(cluster)  # the audit commit was made; the remote did not take it
    hook.unlink()
    again = cli("--repo", cluster, "reconcile", "--push")
    assert again.exit_code == 0, again.output
    assert "pushed 1 audit commit an earlier run owed" in again.stderr
    pushed = subprocs.run(["git", "rev-parse", "main"], cwd=remote, capture_output=True, text=True, check=True)
    assert pushed.stdout.strip() == owed
    quiet = cli("--repo", cluster, "reconcile", "--push")
    assert quiet.exit_code == 0 and "owed" not in quiet.stderr
