"""``haios init``: scaffold a desired-state repo with working defaults (SPEC §1).

A new repo is built in a staging directory beside the target and renamed into place only when it is
complete, validated and committed, so a failed init leaves nothing half-written behind.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config.model import DEFAULT_ON_PARTIAL, NAME_RE, PHASES
from ..config.validate import load_repo
from ..errors import HaiosError, StorageError, UsageError
from ..fsutil import atomic_write, fsync_dir, makedirs_durable
from ..gitrepo import init_and_commit
from ..layout import SCHEMA_DIR
from ..node.root import init_node_root
from ..resources import data_dir

MAX_INIT_NODES = 10000
DEFAULT_SSH_ROOT = "/var/lib/haios"

# The schema each file of the repo is checked against; used for the editor modelines.
_MODELINE_SCHEMA = {
    "haios.yaml": "cluster",
    "desired/state.yaml": "desired-state",
    "policies/thresholds.yaml": "thresholds",
    "policies/budget.yaml": "budget",
    "policies/fx.yaml": "fx",
    "policies/rbac.yaml": "rbac",
}


@dataclass
class InitResult:
    path: Path
    cluster: str
    nodes: list[str]
    transport: str
    commit: str
    replication: str = "off"
    node_roots_created: list[str] = field(default_factory=list)
    node_roots_kept: list[str] = field(default_factory=list)


def default_cluster_name(directory: Path) -> str:
    """A cluster name derived from the directory name (``My Repo`` → ``my-repo``), else ``haios``."""
    name = re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")[:63].strip("-")
    return name if NAME_RE.fullmatch(name) else "haios"


def _modeline(rel: str, schema_name: str) -> str:
    depth = rel.count("/")
    return f"# yaml-language-server: $schema={'../' * depth}{SCHEMA_DIR}/{schema_name}.schema.json\n"


REPLICATION_FROM = 3  # nodes: from here on a cluster replicates its WALs unless told not to


def default_replication(nodes: int) -> str:
    """Never trust one disk: a cluster of 3 or more nodes replicates every WAL to a majority of its
    replica group by default; with fewer there is no majority of others to replicate to."""
    return "sync-majority" if nodes >= REPLICATION_FROM else "off"


def _cluster_yaml(cluster: str, nodes: list[str], transport: str, replication: str) -> str:
    lines = [
        _modeline("haios.yaml", "cluster"),
        "# The cluster haios manages: its nodes and how haios coordinates them. Reference: docs/config.md\n",
        "apiVersion: haios/v1\n",
        "kind: Cluster\n",
        f"name: {cluster}\n",
        "nodes:\n",
    ]
    for name in nodes:
        lines.append(f"  - name: {name}\n")
        if transport == "local":
            lines += ["    transport: local\n", f"    root: nodes/{name}            # relative to this repo\n"]
        else:
            lines += [
                "    transport: ssh\n",
                f"    address: {name}               # host name or IP address\n",
                "    port: 22\n",
                "    user: haios\n",
                f"    root: {DEFAULT_SSH_ROOT}\n",
                "    # host_key: SHA256:...        # pin the host key ('ssh-keygen -lf' of its public key)\n",
            ]
    lines += [
        "coordination:\n",
        "  backend: git                   # locks and fencing tokens as refs in this repo; or etcd\n",
        "replication:\n",
        (
            "  mode: sync-majority            # every WAL on a majority of its replica group; 'off' trusts one disk\n"
            if replication == "sync-majority"
            else "  mode: 'off'                    # or sync-majority (a WAL on a majority of its replica group)\n"
        ),
    ]
    return "".join(lines)


def _desired_yaml(nodes: list[str]) -> str:
    lines = [
        _modeline("desired/state.yaml", "desired-state"),
        "# Desired state: membership and what to do with a half-done transition of each phase.\n",
        "apiVersion: haios/v1\n",
        "kind: DesiredState\n",
        "suspend: false                   # true: detect and plan only, change nothing\n",
        "max_g: null                      # freeze: no BEGIN beyond this iteration\n",
        "membership:\n",
    ]
    lines += [f"  {name}:\n    status: active\n" for name in nodes]
    lines.append("phases:                          # on_partial: auto | rollback | hold | resume\n")
    lines += [
        f"  {phase}:\n    on_partial: {DEFAULT_ON_PARTIAL.get(phase, 'auto')}\n"
        + (
            "    # resumed after its last STEP when its command is resumable; rolled back when not\n"
            if phase == "CONSTRUCT"
            else ""
        )
        for phase in PHASES
    ]
    return "".join(lines)


def _write_text(root: Path, rel: str, text: str) -> None:
    target = root / rel
    makedirs_durable(target.parent)
    atomic_write(target, text.encode("utf-8"))


def _populate(root: Path, cluster: str, nodes: list[str], transport: str, replication: str) -> None:
    _write_text(root, "haios.yaml", _cluster_yaml(cluster, nodes, transport, replication))
    _write_text(root, "desired/state.yaml", _desired_yaml(nodes))
    for name in ("thresholds", "budget", "fx", "rbac"):
        rel = f"policies/{name}.yaml"
        text = (data_dir("policies") / f"{name}.yaml").read_text("utf-8")
        _write_text(root, rel, _modeline(rel, _MODELINE_SCHEMA[rel]) + text)
    for book in sorted(data_dir("playbooks").iterdir(), key=lambda p: p.name):
        if book.name.endswith(".yaml"):
            rel = f"playbooks/{book.name}"
            _write_text(root, rel, _modeline(rel, "playbook") + book.read_text("utf-8"))
    for schema_file in data_dir("schemas").iterdir():
        if schema_file.name.endswith(".schema.json"):
            _write_text(root, f"{SCHEMA_DIR}/{schema_file.name}", schema_file.read_text("utf-8"))
    _write_text(root, "overrides/.gitkeep", "")
    _write_text(root, "status/.gitkeep", "")
    _write_text(
        root,
        ".gitignore",
        "# node roots of local nodes hold live state, not desired state\nnodes/\n"
        "# the simulator's scratch (fake cloud, fault log)\n.sim/\n"
        "# what doctor remembers between passes (WAL read positions, first-seen times)\nstatus/observed/\n",
    )


def init_repo(
    directory: Path | str,
    *,
    cluster: str | None = None,
    nodes: int = 3,
    transport: str = "local",
    force: bool = False,
    replication: str | None = None,
) -> InitResult:
    """Create a desired-state repo at ``directory`` (see ``haios init --help``). ``replication``:
    ``sync-majority`` or ``off``; by default on from 3 nodes (:func:`default_replication`)."""
    target = Path(directory)
    name = cluster if cluster is not None else default_cluster_name(target)
    if not NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid cluster name {name!r}",
            hint="use 1-63 lowercase letters, digits and '-', not starting or ending with '-'",
        )
    if not 1 <= nodes <= MAX_INIT_NODES:
        raise UsageError(f"--nodes must be between 1 and {MAX_INIT_NODES} (got {nodes})")
    if transport not in ("local", "ssh"):
        raise UsageError(f"--transport must be local or ssh (got {transport!r})")
    mode = default_replication(nodes) if replication is None else replication
    if mode not in ("sync-majority", "off"):
        raise UsageError(f"--replication must be sync-majority or off (got {mode!r})")
    if mode == "sync-majority" and nodes < 2:
        raise UsageError("--replication sync-majority needs at least 2 nodes (a WAL is replicated to other nodes)")
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target}: exists and is not a directory")
    non_empty = target.is_dir() and any(target.iterdir())
    if non_empty and not force:
        raise UsageError(
            f"{target}: directory is not empty", hint="choose another directory, or pass --force to write into it"
        )
    node_names = [f"node-{i}" for i in range(1, nodes + 1)]

    if non_empty:
        build = target
    else:
        makedirs_durable(target.parent if str(target.parent) else Path("."))
        build = target.parent / f".{target.name}.haios-init-{os.getpid()}"
        shutil.rmtree(build, ignore_errors=True)
    try:
        _populate(build, name, node_names, transport, mode)
        config = load_repo(build, overrides=True)  # the scaffold must itself be valid
        created: list[str] = []
        kept: list[str] = []
        if transport == "local":
            # compiled as the repo will be once in place (local peers' roots are absolute paths)
            policy = replace(config, path=target.resolve()).compile_policy()
            for spec in config.cluster.nodes:
                made = init_node_root(spec.local_root(build), spec.name, policy)
                (created if made else kept).append(spec.name)
        commit = init_and_commit(
            build, f"haios init: cluster {name} with {nodes} node{'s' if nodes != 1 else ''} ({transport} transport)"
        )
        if build != target:
            if target.is_dir():
                target.rmdir()  # empty: checked above
            os.rename(build, target)
            fsync_dir(target.parent)
    except OSError as exc:
        if build != target:
            shutil.rmtree(build, ignore_errors=True)
        raise StorageError(f"{target}: could not create the repo: {os.strerror(exc.errno or 0)}") from exc
    except HaiosError:
        if build != target:
            shutil.rmtree(build, ignore_errors=True)
        raise
    return InitResult(target, name, node_names, transport, commit, mode, created, kept)
