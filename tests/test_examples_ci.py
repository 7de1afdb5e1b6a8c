"""examples/ci and .pre-commit-hooks.yaml: valid for the tools that read them, and their scripts do
what they say — run here with bash, haios and git exactly as a runner would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import subprocs
from helpers.cluster import git, plant
from ruamel.yaml import YAML

PROJECT = Path(__file__).resolve().parents[1]
WORKFLOWS = PROJECT / "examples/ci/github"
BIN = Path(sys.executable).parent
PEOPLE = ("alice", "bob", "carol", "mallory")


def _tool(name: str) -> str:
    """A tool of the test extras (pyproject.toml), installed next to this interpreter by make test."""
    path = BIN / name
    assert path.exists(), f"{name} is missing: install the test extras (pip install -e '.[test]')"
    return str(path)


def _step(workflow: str, name: str) -> dict[str, Any]:
    doc = YAML(typ="safe").load((WORKFLOWS / workflow).read_text())
    (job,) = doc["jobs"].values()
    (found,) = [s for s in job["steps"] if s.get("name") == name]
    return dict(found)


def _run_step(
    workflow: str, name: str, cwd: Path, env: dict[str, str], expressions: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one ``run:`` step with bash as a runner does (``${{ ... }}`` replaced first, ``env:`` set)."""
    step = _step(workflow, name)
    values = expressions or {}

    def expand(text: str) -> str:
        return re.sub(r"\$\{\{\s*([^}]+?)\s*\}\}", lambda m: values[m.group(1)], text)

    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    full.update({k: expand(str(v)) for k, v in (step.get("env") or {}).items() if k not in env})
    script = expand(step["run"])
    return subprocs.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=full, capture_output=True, text=True, timeout=120, check=False
    )


def test_workflows_are_valid_github_actions() -> None:
    check = _tool("check-jsonschema")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2
    result = subprocs.run(
        [check, "--builtin-schema", "vendor.github-workflows", *files], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pr = YAML(typ="safe").load((WORKFLOWS / "haios-pull-request.yml").read_text())
    scheduled = YAML(typ="safe").load((WORKFLOWS / "haios-reconcile.yml").read_text())
    assert "pull_request" in pr["on"] and pr["permissions"] == {"contents": "read"}
    assert scheduled["on"]["schedule"][0]["cron"] and scheduled["permissions"] == {"contents": "write"}
    assert scheduled["concurrency"]["group"]  # two scheduled runs never overlap


def test_pre_commit_manifest(repo: Path) -> None:
    pre_commit = _tool("pre-commit")
    manifest = PROJECT / ".pre-commit-hooks.yaml"
    result = subprocs.run([pre_commit, "validate-manifest", str(manifest)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    hooks = {h["id"]: h for h in YAML(typ="safe").load(manifest.read_text())}
    hook = hooks["haios-validate"]
    assert re.search(hook["files"], "policies/rbac.yaml") and not re.search(hook["files"], "README.md")
    # the entry, run the way pre-commit runs it (from the repo's top, no file names)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    assert subprocs.run(hook["entry"].split(), cwd=repo, env=env, capture_output=True).returncode == 0
    (repo / "policies/budget.yaml").write_text("apiVersion: haios/v1\nkind: Budget\nregions: 7\n")
    bad = subprocs.run(hook["entry"].split(), cwd=repo, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "policies/budget.yaml" in bad.stdout + bad.stderr


def _keys(tmp_path: Path) -> dict[str, Path]:
    found = {}
    for person in PEOPLE:
        path = tmp_path / "keys" / f"{person}_ed25519"
        path.parent.mkdir(exist_ok=True)
        subprocs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", person, "-f", str(path)], check=True)
        found[person] = path
    return found


def _rbac(repo: Path, keys: dict[str, Path], people: tuple[str, ...]) -> None:
    lines = ["apiVersion: haios/v1", "kind: Rbac", "policy_version: 1", "supervisors:"]
    for person in people:
        lines += [f"  - name: {person}", "    keys:", f"      - {keys[person].with_suffix('.pub').read_text().strip()}"]
    (repo / "policies/rbac.yaml").write_text("\n".join(lines) + "\n")


def _haios(*args: str | Path) -> None:
    subprocs.run([str(BIN / "haios"), *map(str, args)], check=True, capture_output=True)


def test_pull_request_workflow_verifies_overrides_against_the_base_branch(repo: Path, tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    _rbac(repo, keys, ("alice", "bob", "carol"))
    git(repo, "commit", "-qam", "three supervisors")
    base_sha = git(repo, "rev-parse", "HEAD").strip()
    work = tmp_path / "runner"
    work.mkdir()
    git(work, "clone", "-q", str(repo), "head")
    git(work, "clone", "-q", str(repo), "base")
    head = work / "head"
    summary = work / "summary.md"
    env = {"BASE_SHA": base_sha, "GITHUB_STEP_SUMMARY": str(summary)}

    def verify() -> subprocess.CompletedProcess[str]:
        return _run_step("haios-pull-request.yml", "haios override verify", work, env)

    result = verify()
    assert result.returncode == 0 and "no override in this pull request" in result.stdout

    override = head / "overrides/2-analyze-0123456789ab.yaml"
    _haios("--repo", head, "override", "new", "--trace", override.stem, "--action", "abort", "--reason", "pr")
    _haios("--repo", head, "override", "sign", override, "--principal", "alice", "--key", keys["alice"])
    git(head, "add", "overrides")
    git(head, "commit", "-qm", "override: abort")
    result = verify()
    assert result.returncode == 5 and "have 1 of 2 required" in result.stdout
    assert "have 1 of 2 required" in summary.read_text()

    _haios("--repo", head, "override", "sign", override, "--principal", "bob", "--key", keys["bob"])
    git(head, "commit", "-qam", "override: bob signs")
    result = verify()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "have 2 of 2 required" in result.stdout

    # a pull request that makes its author a supervisor cannot approve with that key: the base decides
    _rbac(head, keys, ("alice", "bob", "carol", "mallory"))
    other = head / "overrides/2-blueprint-0123456789ab.yaml"
    _haios("--repo", head, "override", "new", "--trace", other.stem, "--action", "resume", "--reason", "pr")
    for person in ("mallory", "alice"):
        _haios("--repo", head, "override", "sign", other, "--principal", person, "--key", keys[person])
    git(head, "add", "-A")
    git(head, "commit", "-qm", "mallory approves")
    result = verify()
    assert result.returncode == 5
    assert "mallory is not a supervisor in policies/rbac.yaml" in result.stdout
    assert "validate" in _step("haios-pull-request.yml", "haios validate")["run"]
    assert _run_step("haios-pull-request.yml", "haios validate", work, env).returncode == 0


def test_scheduled_workflow_reconciles_pushes_and_fails_when_a_human_is_needed(cluster: Path, tmp_path: Path) -> None:
    remote = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(cluster, "remote", "add", "origin", str(remote))
    git(cluster, "push", "-q", "-u", "origin", "HEAD")
    values = {"github.repository_owner": "example"}
    env = {"RUNNER_TEMP": str(tmp_path), "HAIOS_SSH_KEY": ""}
    assert _run_step("haios-reconcile.yml", "Identity for the audit commits", cluster, env, values).returncode == 0

    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    result = _run_step("haios-reconcile.yml", "haios reconcile --push", cluster, env, values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INTERRUPTED -> CLEAN_EXIT" in result.stdout and "pushed to origin" in result.stdout
    branch = git(cluster, "rev-parse", "--abbrev-ref", "HEAD").strip()
    assert git(cluster, "rev-parse", "HEAD") == git(remote, "rev-parse", branch)
    assert (cluster / "reconcile.json").exists()
    (cluster / "reconcile.json").unlink()

    for n in ("node-2", "node-3"):  # the runner sees one node of three: the minority view
        (cluster / f"nodes/{n}").rename(cluster / f"nodes/{n}.away")
    result = _run_step("haios-reconcile.yml", "haios reconcile --push", cluster, env, values)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "minority view" in result.stdout and "::error::haios reconcile exited 3" in result.stdout
