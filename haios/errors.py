"""The haios exception tree.

Every error haios raises on purpose is a :class:`HaiosError`. Each class knows the process exit code
it maps to (SPEC §10, fixed) and carries a *hint*: one sentence telling the user what to do next.
The command line has one central handler that turns these into a one-line message and that exit
code; anything that is not a ``HaiosError`` is a bug and is reported as such (with a log file).

::

    HaiosError                      1  error: bad input or a failure
    ├── UsageError                  1  a command was called with arguments that make no sense
    │   └── PathEscapeError         1  a path would leave the node's data/ directory
    ├── ConfigError                 1  the desired-state repo is missing, malformed or invalid
    │   ├── YamlRejected            1  a YAML file that cannot be loaded (its Problem says where)
    │   ├── UnknownCurrency         1  a cost in a currency policies/fx.yaml has no rate for
    │   └── ParamsMismatch          1  one idempotency key with other parameters
    ├── ControlFileError            1  a control file could not be read or written
    │   ├── ControlFileMissing      1  the file does not exist
    │   ├── VersionConflict         1  optimistic concurrency: someone else wrote first
    │   └── IntegrityError          5  footer missing, hash mismatch, not UTF-8 (also a VerificationError)
    ├── StorageError                1  an I/O error (full disk, read-only filesystem) while writing state
    │   └── WalFailedError          1  an earlier WAL write or fsync failed: the writer stops
    ├── InputError                  1  a file haios read is not a regular file, too big, or does not parse
    ├── DataSchemaError             1  a data/ file a phase wrote does not match its schema
    ├── WalReadOnlyError            1  the WAL is read-only (a PARTITIONED node): appends refused
    ├── TransportError              1  a node could not be reached or read
    ├── DownloadError               1  a file could not be fetched from its URL
    ├── RepoError                   1  a git operation on the desired-state repo failed
    ├── MetricsError                1  metrics could not be pushed to a Pushgateway or served
    ├── CoordinationError           1  the coordination backend (etcd) could not be reached
    ├── ParticipantFailed           1  a participant could not take part in a phase
    │   └── CommandFailed           1  the phase's command failed on the node, which aborted the phase
    ├── CloudError                  1  the simulator's fake cloud refused a call (an injected failure)
    ├── NonRetryable                1  a compensator's failure no retry can fix
    ├── InvalidTransition           1  an event the recovery state machine does not allow (a bug)
    ├── BarrierError                1  a phase out of order (PHASE_ORDER_BARRIER) or beyond max_g
    │   └── StateBehindError        1  state.txt missed an end record its WAL holds
    ├── VerificationError           5  signatures, integrity, refused repair
    │   ├── WalCorruptError         5  a bad WAL record (its Corruption says where)
    │   ├── SegmentHeaderError      5  a WAL segment header that is not valid
    │   ├── RepairRefused           5  a repair would drop records after mid-log corruption
    │   ├── ReplicaChunkError       5  a replica chunk that does not verify
    │   ├── HostKeyError            5  a node's host key is not the pinned one
    │   ├── SignatureError          5  a signature that is malformed or does not verify
    │   └── ForensicMismatch        5  re-ingested events disagree with their tombstone
    ├── BlockedError                3  needs a human: AWAITING_ACK, BLOCKED_COMPENSATOR, minority view
    │   ├── PartitionError          3  the node is PARTITIONED: its WAL is read-only until it heals
    │   ├── DataDriftError          3  a data/ file changed outside any phase: never overwritten unseen
    │   ├── CausalOrderError        3  a replay would put a causally older version of a file over a newer one
    │   ├── ReplayConflict          3  a version conflict that redoing the replay from the WAL did not clear
    │   ├── WalMissingError         3  a replicated node's WAL is gone: restore it from the replicas
    │   └── QuorumError             3  a majority of the replica group cannot acknowledge
    ├── LockHeldError               4  another reconciler holds the lock
    │   ├── BarrierMoved            4  another reconciler moved the barrier first
    │   └── WalLockedError          4  another process writes the node's WAL
    ├── FencedError                 4  a stale fencing token was refused
    └── Interrupted               130  the user interrupted the command (Ctrl-C)

Every error crosses a process boundary as itself: :meth:`HaiosError.to_wire` is what the command
line prints as JSON and what a node answers ``node recover`` or a replica request with, and
:func:`from_wire` rebuilds it on the caller's side — class, hint, exit code and the fields a class
needs (a WAL corruption, a file's problems). A class the caller does not know arrives as a
HaiosError with the exit code it was sent with.

Third-party errors (ruamel.yaml, jsonschema, GitPython, OS errors) are translated into this tree at
the boundary where they happen (``raise ConfigError(...) from exc``) and never escape as themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# SPEC §10 exit codes (fixed).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PENDING = 2
EXIT_BLOCKED = 3
EXIT_LOCKED = 4
EXIT_VERIFICATION = 5
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in one file of the desired-state repo. ``line`` and ``column`` are 1-based."""

    file: str
    line: int
    column: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.key}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "key": self.key,
            "message": self.message,
        }


@dataclass(frozen=True)
class Corruption:
    """The first bad place in a WAL."""

    segment: str
    offset: int
    lamport: int | None  # the Lamport index expected there
    reason: str
    torn_tail: bool

    @property
    def kind(self) -> str:
        return "torn tail" if self.torn_tail else "mid-log corruption"

    def as_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "offset": self.offset,
            "lamport": self.lamport,
            "reason": self.reason,
            "torn_tail": self.torn_tail,
        }

    def describe(self) -> str:
        where = f"segment {self.segment} offset {self.offset}"
        if self.lamport is not None:
            where += f" (lamport {self.lamport})"
        return f"{where}: {self.reason} [{self.kind}]"


class HaiosError(Exception):
    """Root of every error haios raises on purpose.

    ``message`` says what is wrong (naming the file or node), ``hint`` what to do about it.
    """

    exit_code: int = EXIT_ERROR
    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and the hint on one line, as the command line prints them."""
        text = " ".join(self.message.split())
        if self.hint:
            return f"{text} (hint: {' '.join(self.hint.split())})"
        return text

    def to_wire(self) -> dict[str, Any]:
        """The error as JSON for another process (the CLI's error output, a node's answer to
        ``node recover``, a replica server's answer): :func:`from_wire` rebuilds it there."""
        return {
            "type": type(self).__name__,
            "message": " ".join(self.message.split()),
            "hint": self.hint,
            "exit_code": self.exit_code,
            **self.wire_fields(),
        }

    def wire_fields(self) -> dict[str, Any]:
        """What besides message and hint a class needs to be rebuilt (none for most)."""
        return {}

    def _take_fields(self, fields: dict[str, Any]) -> None:
        """Set what :meth:`wire_fields` sent (the counterpart of a class that sends some)."""


class UsageError(HaiosError):
    """A command was called with arguments that make no sense together."""

    default_hint = "see 'haios COMMAND --help'"


class ConfigError(HaiosError):
    """The desired-state repo is missing, malformed or invalid.

    ``problems`` holds every problem found (``haios validate`` reports them all in one run).
    """

    default_hint = "run 'haios validate' to list every problem with its file, line and key"

    def __init__(self, message: str, *, hint: str | None = None, problems: list[object] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems: list[object] = list(problems or [])

    def wire_fields(self) -> dict[str, Any]:
        if not self.problems:
            return {}
        return {"problems": [p.as_dict() if isinstance(p, Problem) else str(p) for p in self.problems]}

    def _take_fields(self, fields: dict[str, Any]) -> None:
        self.problems = []
        for p in fields.get("problems") or []:
            try:
                self.problems.append(Problem(**p) if isinstance(p, dict) else str(p))
            except TypeError:
                self.problems.append(str(p))


class ControlFileError(HaiosError):
    """A control file (SPEC §2.2) could not be read or written."""

    def __init__(self, path: Path | str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}", hint=hint)
        self.path = Path(path)

    def wire_fields(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def _take_fields(self, fields: dict[str, Any]) -> None:
        self.path = Path(str(fields.get("path") or ""))


class ControlFileMissing(ControlFileError):
    """The control file does not exist."""

    default_hint = "check the node root path, or run 'haios init' to create the node roots"


class VersionConflict(ControlFileError):
    """The file's version is not the one the writer expected (optimistic concurrency).

    Callers treat it as a partial write: abort and redo from a fresh read (SPEC §2.2).
    """

    default_hint = "another writer changed the file first; re-read it and retry"

    def __init__(self, path: Path | str, *, expected: int | None, actual: int | None) -> None:
        exp = "absent" if expected is None else f"v{expected}"
        act = "absent" if actual is None else f"v{actual}"
        super().__init__(path, f"version conflict: expected {exp}, found {act}")
        self.expected = expected
        self.actual = actual


class StorageError(HaiosError):
    """An I/O error (full disk, read-only filesystem, permissions) while writing state."""

    default_hint = "free space or fix permissions, then run the command again; nothing was replaced"


class InputError(HaiosError):
    """A file haios read (written by someone else) is not what it must be: not a regular file, over
    its kind's size limit, nested too deep, or not parseable. Names the file; nothing was read past
    the limit."""

    default_hint = "restore the file from git or a backup, or remove it"

    def __init__(
        self, path: Path | str, reason: str, *, hint: str | None = None, line: int = 1, column: int = 1
    ) -> None:
        super().__init__(f"{path}: {reason}", hint=hint)
        self.path = Path(path)
        self.reason = reason
        self.line, self.column = line, column  # where in the file, when the parser said

    def wire_fields(self) -> dict[str, Any]:
        return {"path": str(self.path), "reason": self.reason, "line": self.line, "column": self.column}

    def _take_fields(self, fields: dict[str, Any]) -> None:
        self.path, self.reason = Path(str(fields.get("path") or "")), str(fields.get("reason") or self.message)
        self.line, self.column = int(fields.get("line") or 1), int(fields.get("column") or 1)


class PathEscapeError(UsageError):
    """A path supplied by a caller or a record would leave the node's ``data/`` directory."""

    default_hint = "paths are relative to data/, without '..', absolute parts or symlinks"


class MetricsError(HaiosError):
    """Metrics could not be pushed to a Pushgateway, or the exporter could not listen."""

    default_hint = "check the Pushgateway's URL and that it is up (curl URL/-/ready), or the port"


class CoordinationError(HaiosError):
    """The coordination backend (etcd) could not be reached, or answered wrongly."""

    default_hint = "check the etcd endpoints in haios.yaml ('haios doctor' tests each one)"


class BarrierError(HaiosError):
    """The requested (g, phase) would break PHASE_ORDER_BARRIER or exceed max_g."""

    default_hint = "phases run in order ANALYZE, BLUEPRINT, CONSTRUCT, VALIDATE, IDLE; check the node's state.txt"


class TransportError(HaiosError):
    """A node could not be reached, or a file on it could not be read."""

    default_hint = "check that the node is up and reachable ('haios doctor' tests every node)"


class DownloadError(HaiosError):
    """A file could not be fetched from its URL: unreachable, refused, too slow, too big, not HTTP 200."""

    default_hint = "check the URL and this machine's network, or download the file by hand and pass its path"


class RepoError(HaiosError):
    """A git operation on the desired-state repo failed."""

    default_hint = "check that the directory is a git repository and that git works there"


class VerificationError(HaiosError):
    """Something failed verification: a signature, an integrity check, a refused repair."""

    exit_code = EXIT_VERIFICATION


class IntegrityError(ControlFileError, VerificationError):
    """A control file's integrity footer is missing or does not match its body."""

    exit_code = EXIT_VERIFICATION
    default_hint = (
        "the file was corrupted or edited by hand; restore it from a snapshot or a peer, or run 'haios doctor'"
    )


class BlockedError(HaiosError):
    """Automation must stop here and a human must decide."""

    exit_code = EXIT_BLOCKED


class PartitionError(BlockedError):
    """The node is PARTITIONED (a majority of its peers is silent): no phase may begin, no WAL append."""

    default_hint = "wait for the partition to heal; the node refuses writes while it is in the minority"


class LockHeldError(HaiosError):
    """Another reconciler holds the lock (lease) this command needs."""

    exit_code = EXIT_LOCKED
    default_hint = "wait for the other run to finish, or for its lease to expire"


class FencedError(HaiosError):
    """A command carried a fencing token lower than one the node already accepted."""

    exit_code = EXIT_LOCKED
    default_hint = "a newer reconciler took over; this run must stop"


class Interrupted(HaiosError):
    """The user interrupted the command."""

    exit_code = EXIT_INTERRUPTED
    default_hint = "run the command again; it resumes from its last durable step"


# -- the errors of one area each (defined here so that every class can cross a process boundary) --


class YamlRejected(ConfigError):
    """A YAML file cannot be loaded; ``problem`` says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem), problems=[problem])
        self.problem = problem

    def _take_fields(self, fields: dict[str, Any]) -> None:
        super()._take_fields(fields)
        first = self.problems[0] if self.problems else None
        self.problem = first if isinstance(first, Problem) else Problem("", 1, 1, "(root)", self.message)


class UnknownCurrency(ConfigError):
    """A cost is in a currency that ``policies/fx.yaml`` has no rate for."""

    default_hint = "add its rate to policies/fx.yaml (haios budget fx-import)"


class ParamsMismatch(ConfigError):
    """The same idempotency key came with other parameters (SPEC §4.4: an error, never a rerun)."""

    default_hint = "an idempotency key names one call: give the new call a new key"


class DataSchemaError(HaiosError):
    """A data/ file a phase writes does not match the schema registered for it."""

    default_hint = "fix the executor's output, or the schema in the desired-state repo's schemas/ folder"


class WalReadOnlyError(HaiosError):
    """The WAL is open read-only (for example while the node is PARTITIONED); appends are refused."""

    default_hint = "the node refuses writes while it is partitioned or read-only; wait for it to heal"


class WalFailedError(StorageError):
    """An earlier write or fsync failed; this writer refuses to continue."""

    default_hint = "close the WAL and open it again: opening repairs the tail, no acknowledged record is lost"


class WalLockedError(LockHeldError):
    """Another process holds the WAL's writer lock."""

    default_hint = "only one writer per node: stop the other writer first"


class StateBehindError(BarrierError):
    """state.txt does not know of a phase its WAL ended: nothing begins until it does."""

    default_hint = (
        "run 'haios reconcile': after a crash it brings state.txt up to the WAL; an older state.txt waits for "
        "a signed resume ('haios doctor' says which it is)"
    )


class BarrierMoved(LockHeldError):
    """Someone else moved the barrier between our read and our update."""

    default_hint = "another reconciler published first; read the barrier again"


class WalMissingError(BlockedError):
    """A replicated node's WAL is gone: writing a new one would fork its history from its replicas'."""


class QuorumError(BlockedError):
    """Fewer than a majority of the node's replica group can acknowledge a durable record."""

    default_hint = (
        "a majority of the replica group must be reachable; bring the peers back ('haios doctor' names them) "
        "or, for one slow peer, 'haios node replication --permit-async PEER'"
    )


class WalCorruptError(VerificationError):
    """The WAL has a bad record; ``corruption`` says where and whether it is a torn tail."""

    def __init__(self, directory: Path, corruption: Corruption) -> None:
        hint = (
            f"a crash left a partial record; run 'haios wal repair {directory}'"
            if corruption.torn_tail
            else f"records after this point would be lost by a repair; restore the node from a replica, "
            f"or run 'haios wal repair --force {directory}' to keep only the valid prefix"
        )
        super().__init__(f"{directory}: {corruption.describe()}", hint=hint)
        self.directory = directory
        self.corruption = corruption

    def wire_fields(self) -> dict[str, Any]:
        return {"corruption": self.corruption.as_dict(), "directory": str(self.directory)}

    def _take_fields(self, fields: dict[str, Any]) -> None:
        c = fields.get("corruption")
        self.directory = Path(str(fields.get("directory") or ""))
        try:
            assert isinstance(c, dict)
            lamport = c.get("lamport")
            self.corruption = Corruption(
                str(c["segment"]),
                int(c["offset"]),
                None if lamport is None else int(lamport),
                str(c["reason"]),
                bool(c["torn_tail"]),
            )
        except (AssertionError, KeyError, TypeError, ValueError):
            self.corruption = Corruption("?", 0, None, self.message, False)


class SegmentHeaderError(VerificationError, ValueError):
    """A WAL segment's header is not valid."""


class RepairRefused(VerificationError):
    """Repair would drop records after mid-log corruption; refused without --force."""


class ReplicaChunkError(VerificationError):
    """A chunk of records that does not verify against the replica's chain."""

    default_hint = "the origin resends it; if it keeps failing, check the link and the peer's disk"


class HostKeyError(VerificationError):
    """The node presented a host key that is not the pinned one (or none is pinned)."""

    default_hint = "check the node's host key (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it) and pin it"


class SignatureError(VerificationError, ValueError):
    """A signature that is malformed or does not verify; the message says which rule failed."""


class ForensicMismatch(VerificationError):
    """Re-ingested events disagree with the tombstone left when their node was pruned."""

    default_hint = "the archived log is not the one this cluster pruned; do not merge it (compare its source)"


class CausalOrderError(BlockedError):
    """A replay would write a version of a causally ordered data/ file (its schema sets
    ``requires_causal``) whose vector clock happened before the clock of the version it holds."""

    exit_code = EXIT_BLOCKED
    default_hint = (
        "the file holds a newer version than the one being replayed: keep it, and abort the older "
        "transition with a signed override (haios override new --trace ID --action abort)"
    )


class ReplayConflict(BlockedError):
    """A roll-forward met a version conflict (in data/ or a control file) that aborting the partial
    write and redoing it from the WAL, a bounded number of times, did not clear."""

    exit_code = EXIT_BLOCKED
    default_hint = (
        "compare the file with the WAL's INTENTs ('haios wal inspect'), put back the version the WAL names, "
        "then run reconcile again"
    )


class DataDriftError(BlockedError):
    """A data/ file differs from the bytes the phase read or haios last wrote (changed outside any phase)."""

    exit_code = EXIT_BLOCKED
    default_hint = (
        "something other than a phase changed data/; keep what you need of the file, put back what "
        "the phase read ('haios wal inspect' shows the INTENT), then run again"
    )


class ParticipantFailed(HaiosError):
    """A participant could not take part (refused, crashed, unreachable)."""


class CommandFailed(ParticipantFailed):
    """The phase's command failed on a node (it exited non-zero, overran or was killed): the node
    aborted the phase; retrying without a change would fail again."""


class CloudError(HaiosError):
    """The simulator's fake cloud refused a call (an injected failure)."""

    default_hint = "the compensator will be retried"


class NonRetryable(HaiosError):
    """Raise it from a Python compensator for a failure that no retry can fix (a bad request, no
    permission): the compensation fails at once, without further attempts. Any exception class with
    ``retryable = False`` counts the same."""

    retryable = False

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)


class InvalidTransition(HaiosError):
    """An event that the recovery state machine does not allow in a state (a bug in the caller)."""

    default_hint = "this is a bug in haios; please report it with the trace's journal"


# -- the wire ------------------------------------------------------------------------------------


def _classes() -> dict[str, type[HaiosError]]:
    found: dict[str, type[HaiosError]] = {}
    todo: list[type[HaiosError]] = [HaiosError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == __name__:
            found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def from_wire(error: dict[str, Any], *, node: str | None = None) -> HaiosError:
    """Rebuild the error another process sent as :meth:`HaiosError.to_wire`, as its own class (a
    class this haios does not know arrives as a HaiosError with the exit code it was sent with).
    ``node``: the node it came from, named at the front of the message."""
    kind = str(error.get("type") or "HaiosError")
    message = " ".join(str(error.get("message") or "").split()) or kind
    if node is not None and not message.startswith(node):
        message = f"{node}: {message}"
    hint = str(error.get("hint") or "")
    known = _classes()
    cls = known.get(kind, HaiosError)
    exc = cls.__new__(cls)
    HaiosError.__init__(exc, message, hint=hint)
    exc._take_fields(error)
    if kind not in known or cls is HaiosError:
        try:
            exc.exit_code = int(error.get("exit_code") or EXIT_ERROR)
        except (TypeError, ValueError):
            exc.exit_code = EXIT_ERROR
    return exc
