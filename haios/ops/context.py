"""What every use case opens first: the desired-state repo's configuration, a transport to its
nodes, its coordination backend, a clock and the audit trail — each of them given (a test's mock
transport, an in-memory backend, a fake clock, an in-memory audit trail) or opened from
``haios.yaml`` and git.

This floor is the only one that opens a repo, a transport or a backend; the recovery core below it is
handed what it needs (:class:`haios.recovery.model.Context`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..audit import GitRecorder, Recorder
from ..clock import wall_clock
from ..config import load_repo
from ..config.model import RepoConfig
from ..coord import Backend, open_backend
from ..transport import Transport, open_transport


@dataclass
class OpsContext:
    repo: Path
    config: RepoConfig
    transport: Transport
    backend: Backend
    clock: Callable[[], float]
    recorder: Recorder  # where the desired state's version is read and the run recorded
    owns_transport: bool  # opened here: closed by close()

    def close(self) -> None:
        """Close the transport if this context opened it (an SSH one keeps connections until then)."""
        if self.owns_transport:
            close_transport(self.transport)


def close_transport(transport: object) -> None:
    """Close a transport that has a close()."""
    closer = getattr(transport, "close", None)
    if closer is not None:
        closer()


def open_context(
    repo: Path | str,
    *,
    transport: Transport | None = None,
    backend: Backend | None = None,
    clock: Callable[[], float] | None = None,
    recorder: Recorder | None = None,
) -> OpsContext:
    """Open the repo (a policy file that is not valid blocks only what needs it: ``degraded``), and
    whatever of transport, backend, clock and recorder (git) was not given."""
    path = Path(repo)
    config = load_repo(path, overrides=False, degraded=True)
    return OpsContext(
        path,
        config,
        transport if transport is not None else open_transport(path, config),
        backend if backend is not None else open_backend(config),
        clock if clock is not None else wall_clock(None),
        recorder if recorder is not None else GitRecorder(path),
        owns_transport=transport is None,
    )
