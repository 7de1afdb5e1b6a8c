"""Supervisors with real ssh-keygen keys, and signed overrides made through the command line."""

from __future__ import annotations

from pathlib import Path

from . import Invoke, subprocs
from .cluster import git

PEOPLE = ("alice", "bob", "carol")


def supervisors(cluster: Path, directory: Path) -> dict[str, Path]:
    """Three active supervisors in the cluster's rbac.yaml (threshold 2), each with an ed25519 key
    made in ``directory``; committed."""
    found = {}
    lines = ["apiVersion: haios/v1", "kind: Rbac", "policy_version: 2", "supervisors:"]
    for person in PEOPLE:
        path = directory / f"{person}_ed25519"
        subprocs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", person, "-f", str(path)], check=True)
        found[person] = path
        lines += [f"  - name: {person}", "    keys:", f"      - {path.with_suffix('.pub').read_text().strip()}"]
    (cluster / "policies/rbac.yaml").write_text("\n".join(lines) + "\n")
    git(cluster, "commit", "-qam", "tests: three supervisors")
    return found


def signed_override(
    cli: Invoke, cluster: Path, keys: dict[str, Path], trace: str, action: str, signers: tuple[str, ...]
) -> Path:
    """``haios override new`` then ``sign`` by each of ``signers``, committed as a merged pull request would be."""
    path = cluster / "overrides" / f"{trace}.yaml"
    path.unlink(missing_ok=True)
    result = cli("--repo", cluster, "override", "new", "--trace", trace, "--action", action, "--reason", "tests")
    assert result.exit_code == 0, result.output
    for person in signers:
        result = cli("--repo", cluster, "override", "sign", path, "--principal", person, "--key", keys[person])
        assert result.exit_code == 0, result.output
    git(cluster, "add", "overrides")
    git(cluster, "commit", "-qm", f"override: {action} {trace}")
    return path
