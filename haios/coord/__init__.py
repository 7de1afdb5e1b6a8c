"""Coordination backends: recovery leases and fencing tokens (SPEC §4.6, §6.2)."""

from __future__ import annotations

from pathlib import Path

from ..config.model import RepoConfig
from ..errors import BarrierMoved, ConfigError
from .base import Backend, Barrier, Lease, holder_alive, holder_words, new_holder
from .etcd import EtcdBackend
from .git import GitBackend


def open_backend(config: RepoConfig) -> Backend:
    """The backend haios.yaml names."""
    c = config.cluster.coordination
    if c.backend == "git":
        return GitBackend(Path(config.path), remote=c.git_remote)
    if c.backend == "etcd":
        return EtcdBackend(
            c.etcd_endpoints,
            cluster=config.cluster.name,
            prefix=c.etcd_prefix,
            timeout=c.etcd_dial_timeout,
            repo=Path(config.path),
        )
    raise ConfigError(
        f"{config.path}/haios.yaml: coordination backend {c.backend!r} is not available in this version",
        hint="use 'backend: git'",
    )


__all__ = [
    "Backend",
    "Barrier",
    "BarrierMoved",
    "GitBackend",
    "Lease",
    "holder_alive",
    "holder_words",
    "new_holder",
    "open_backend",
]
