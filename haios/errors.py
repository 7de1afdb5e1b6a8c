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
    ├── ControlFileError            1  a control file could not be read or written
    │   ├── ControlFileMissing      1  the file does not exist
    │   ├── VersionConflict         1  optimistic concurrency: someone else wrote first
    │   └── IntegrityError          5  footer missing, hash mismatch, not UTF-8 (also a VerificationError)
    ├── StorageError                1  an I/O error (full disk, read-only filesystem) while writing state
    ├── InputError                  1  a file haios read is not a regular file, too big, or does not parse
    ├── TransportError              1  a node could not be reached or read
    ├── RepoError                   1  a git operation on the desired-state repo failed
    ├── MetricsError                1  metrics could not be pushed to a Pushgateway or served
    ├── CoordinationError           1  the coordination backend (etcd) could not be reached
    ├── BarrierError                1  a phase out of order (PHASE_ORDER_BARRIER) or beyond max_g
    ├── VerificationError           5  signatures, integrity, refused repair
    ├── BlockedError                3  needs a human: AWAITING_ACK, BLOCKED_COMPENSATOR, minority view
    │   └── PartitionError          3  the node is PARTITIONED: its WAL is read-only until it heals
    ├── LockHeldError               4  another reconciler holds the lock
    ├── FencedError                 4  a stale fencing token was refused
    └── Interrupted               130  the user interrupted the command (Ctrl-C)

Third-party errors (ruamel.yaml, jsonschema, GitPython, OS errors) are translated into this tree at
the boundary where they happen (``raise ConfigError(...) from exc``) and never escape as themselves.
"""

from __future__ import annotations

from pathlib import Path

# SPEC §10 exit codes (fixed).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PENDING = 2
EXIT_BLOCKED = 3
EXIT_LOCKED = 4
EXIT_VERIFICATION = 5
EXIT_INTERRUPTED = 130


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


class ControlFileError(HaiosError):
    """A control file (SPEC §2.2) could not be read or written."""

    def __init__(self, path: Path | str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}", hint=hint)
        self.path = Path(path)


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
