"""The SSH transport (paramiko): node roots on other machines, reached with pinned host keys.

Reads go over SFTP (haios's own read-only client, :mod:`.sftp`, which sends a step's requests
together); every change goes through ``haios node ...`` on the node, so a remote node runs the same
code with the same fsyncs and fence checks as a local one. Nothing is ever passed through a
shell unquoted: node names, roots and request fields are checked against strict patterns before a
connection is made, and every word of a remote command is ``shlex.quote``d.

Host keys are pinned: the node's ``host_key`` fingerprint in ``haios.yaml`` or, without one, the
desired-state repo's ``known_hosts`` file. An unknown host or a key that does not match is refused
(exit 5) with the expected and presented fingerprints; nothing is sent to it. Authentication uses the
key in ``$HAIOS_SSH_IDENTITY``, else the SSH agent and the user's default keys.

One connection per node is kept for the transport's life (channels are multiplexed over it); a
connection that fails to open is retried with a short back-off, a command is never retried here
(the caller's checkpoints decide what happens next).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import socket
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, controlfile
from ..config.model import NAME_RE, NodeSpec, ssh_root_ok
from ..errors import HaiosError, HostKeyError, IntegrityError, TransportError, UsageError, from_wire
from ..fsutil import atomic_write, makedirs_durable
from ..node import shapes
from ..untrusted import LIMITS
from ..wal.summary import SUMMARY_NAME
from .base import ALIVE, Completed, Handler
from .sftp import Entry, Range, Sftp

SAFE_WORD = re.compile(r"^[A-Za-z0-9._:/@+=,%-]*$")  # argv words that need no quoting at all
CONNECT_RETRIES = (0.2, 0.5, 1.0)  # waits between attempts to open a connection
MIRROR_FILES = ("state.txt", "heartbeat", "gossip", "fence", "policy")


def fingerprint(key_blob: bytes) -> str:
    """``SHA256:<base64, no padding>``, as ``ssh-keygen -lf`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


def check_node(spec: NodeSpec) -> None:
    """Refuse a node whose name or root could smuggle anything into a remote command."""
    if not NAME_RE.fullmatch(spec.name):
        raise UsageError(f"node name {spec.name!r} is not allowed (lowercase letters, digits and '-')")
    if not ssh_root_ok(spec.root):
        raise UsageError(
            f"{spec.name}: root {spec.root!r} is not allowed for an ssh node",
            hint="an absolute path of letters, digits and . _ + - / only",
        )
    if spec.address is None or not re.match(r"^[A-Za-z0-9.:_\[\]-]{1,253}$", spec.address):
        raise UsageError(f"{spec.name}: address {spec.address!r} is not a host name or IP address")


def _check_request(request: dict[str, Any]) -> None:
    """The identifiers of a recovery request must be plain words (the JSON itself is quoted anyway)."""
    for key in ("op", "phase", "trace_id"):
        value = request.get(key)
        if value is not None and not re.match(r"^[A-Za-z0-9._-]{1,200}$", str(value)):
            raise UsageError(f"recovery request: {key} {value!r} is not allowed")


def quote_command(words: Iterable[str]) -> str:
    return " ".join(w if w and SAFE_WORD.match(w) else shlex.quote(w) for w in words)


@dataclass
class _Conn:
    client: Any  # paramiko.SSHClient
    sftp: Sftp | None = None


class SshTransport:
    """Reaches ``specs`` (transport ssh) over SSH; ``mirror`` is where WAL and control files are copied
    for the observation pass (only what is new is fetched)."""

    def __init__(
        self,
        specs: Iterable[NodeSpec],
        *,
        known_hosts: Path | None = None,
        mirror: Path,
        identity: str | None = None,
        connect_timeout: float | None = None,
        command_timeout: float = 300.0,
        remote_command: str | None = None,
    ) -> None:
        self.specs = {s.name: s for s in specs}
        for spec in self.specs.values():
            check_node(spec)
        self.known_hosts = known_hosts
        self.mirror = mirror
        self.identity = identity if identity is not None else os.environ.get("HAIOS_SSH_IDENTITY")
        # how long to wait for a node to answer (connect, handshake, a channel): $HAIOS_SSH_TIMEOUT or 10 s
        self.connect_timeout = (
            connect_timeout if connect_timeout is not None else _env_seconds("HAIOS_SSH_TIMEOUT", 10.0)
        )
        self.io_timeout = max(3 * self.connect_timeout, 5.0)  # a read that waits this long: the node is gone
        self.command_timeout = command_timeout
        # the haios command on the nodes ($HAIOS_REMOTE_COMMAND, e.g. '/opt/haios/bin/haios')
        self.remote = shlex.split(remote_command or os.environ.get("HAIOS_REMOTE_COMMAND") or "haios")
        self._conns: dict[str, _Conn] = {}
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in self.specs}
        self._versions: dict[str, str] = {}
        self.bytes_read = 0  # over SFTP, for the incremental-read figures

    def nodes(self) -> list[str]:
        return sorted(self.specs)

    def spec(self, node: str) -> NodeSpec:
        try:
            return self.specs[node]
        except KeyError:
            raise TransportError(f"{node}: not an ssh node of this transport") from None

    # -- connections ----------------------------------------------------------------------------

    def _pinned(self, spec: NodeSpec) -> Any:
        """A paramiko host-key policy that accepts exactly the pinned key."""
        import paramiko

        known: dict[str, str] = {}
        if spec.host_key is None and self.known_hosts is not None and self.known_hosts.exists():
            keys = paramiko.HostKeys(str(self.known_hosts))
            host = str(spec.address) if spec.port == 22 else f"[{spec.address}]:{spec.port}"
            for _kind, key in (keys.lookup(host) or {}).items():
                known[fingerprint(key.asbytes())] = key.get_name()
        where = "haios.yaml host_key" if spec.host_key else f"{self.known_hosts or 'known_hosts'}"

        class Pinned(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
                presented = fingerprint(key.asbytes())
                if spec.host_key is not None and presented == spec.host_key:
                    return
                if spec.host_key is None and presented in known:
                    return
                expected = spec.host_key or (", ".join(sorted(known)) or "none (the host is unknown)")
                raise HostKeyError(
                    f"{spec.name}: host key mismatch at {spec.address}:{spec.port}: expected {expected} "
                    f"({where}), presented {presented} ({key.get_name()}); refusing to connect"
                )

        return Pinned()

    def _connect(self, node: str) -> _Conn:
        import logging

        import paramiko

        # paramiko logs every failed handshake with a traceback; haios reports them itself, once
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)

        spec = self.spec(node)
        last: Exception | None = None
        for wait in (*CONNECT_RETRIES, None):
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(self._pinned(spec))  # every key goes through the pin check
            try:
                client.connect(
                    spec.address or "",
                    port=spec.port,
                    username=spec.user,
                    key_filename=self.identity,
                    look_for_keys=self.identity is None,
                    allow_agent=self.identity is None,
                    timeout=self.connect_timeout,
                    banner_timeout=self.connect_timeout,
                    auth_timeout=self.connect_timeout,
                    transport_factory=_transport_class(),
                )
                transport = client.get_transport()
                if transport is not None:
                    transport.set_keepalive(15)
                    _tcp_keepalive(transport.sock, self.io_timeout)
                return _Conn(client)
            except HostKeyError:
                client.close()
                raise
            except paramiko.AuthenticationException as exc:
                client.close()
                raise TransportError(
                    f"{node}: authentication as {spec.user} at {spec.address}:{spec.port} failed ({exc})",
                    hint="install the reconciler's public key in the node's authorized_keys, or set HAIOS_SSH_IDENTITY",
                ) from exc
            except (OSError, paramiko.SSHException, EOFError) as exc:
                client.close()
                last = exc
                if wait is None:
                    break
                time.sleep(wait)
        raise TransportError(
            f"{node}: cannot connect to {spec.address}:{spec.port}: {_why(last)}",
            hint=_connect_hint(last, spec),
        ) from last

    def _conn(self, node: str) -> _Conn:
        with self._locks[node] if node in self._locks else threading.Lock():
            conn = self._conns.get(node)
            transport = conn.client.get_transport() if conn is not None else None
            if conn is None or transport is None or not transport.is_active():
                conn = self._conns[node] = self._connect(node)
            return conn

    def _sftp(self, node: str) -> Sftp:
        conn = self._conn(node)
        if conn.sftp is None:
            try:
                channel = conn.client.get_transport().open_session(timeout=self.connect_timeout)
                # every blocking read gives up when the node goes silent (a cut link sends no reset)
                channel.settimeout(self.io_timeout)
                channel.invoke_subsystem("sftp")
                conn.sftp = Sftp(channel, on_data=self._count)
            except Exception as exc:  # noqa: BLE001 - paramiko raises several unrelated types here
                self._drop(node)
                raise ssh_error(node, "SFTP is not available", exc) from exc
        return conn.sftp

    def _count(self, read: int) -> None:
        self.bytes_read += read

    def _drop(self, node: str) -> None:
        conn = self._conns.pop(node, None)
        if conn is not None:
            conn.client.close()

    def disconnect(self, node: str) -> None:
        """Close the connection to one node (the next request opens a new one)."""
        self._drop(node)

    def close(self) -> None:
        for node in list(self._conns):
            self._drop(node)

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ----------------------------------------------------------------------------------

    def _path(self, node: str, relpath: str) -> str:
        if relpath.startswith("/") or ".." in relpath.split("/"):
            raise UsageError(f"{relpath!r} is not a path inside the node root")
        return f"{self.spec(node).root.rstrip('/')}/{relpath}"

    @contextmanager
    def _reading(self, node: str, what: str) -> Iterator[None]:
        """Network failures while reading ``what`` become one TransportError, and the connection is
        dropped (a timed-out one is no use: the next operation connects afresh). A missing file and
        haios's own errors (a full local disk) pass through as they are."""
        try:
            yield
        except (FileNotFoundError, HaiosError):
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, a timeout, paramiko's SSHException, EOFError
            self._drop(node)
            raise ssh_error(node, f"cannot read {what}", exc) from exc

    def read_file(self, node: str, relpath: str) -> bytes | None:
        sftp = self._sftp(node)
        path = self._path(node, relpath)
        try:
            with self._reading(node, relpath):
                attrs = sftp.lstat(path)
                _check_remote(node, path, attrs)
                (data,) = sftp.read_files([(path, attrs.st_size or 0, LIMITS["control"])])
                if isinstance(data, OSError):
                    raise data
        except FileNotFoundError:
            return None
        if len(data) > LIMITS["control"]:
            raise IntegrityError(f"{node}:{path}", "grew past the limit for control files while it was read")
        return data

    def local_view(self, node: str) -> Path:
        """Bring ``<mirror>/<node>`` up to date: control files whole, WAL segments by their new bytes.
        A few steps of requests sent together: list the root and the WAL; open the control files and
        the segments; read the files, the end of each segment's copy here (the last 512 bytes, to
        see that the copy is still the segment's beginning) and what each segment gained."""
        sftp = self._sftp(node)
        root = self.spec(node).root.rstrip("/")
        local = self.mirror / node
        makedirs_durable(local / "wal")
        with self._reading(node, "the node root"):
            top, listed = sftp.listdirs([root, f"{root}/wal"])
            if isinstance(top, FileNotFoundError):
                raise TransportError(f"{node}: no node root at {root}")
            if isinstance(top, OSError):
                raise top
            if isinstance(listed, OSError):
                raise listed
            names = {a.filename: a for a in top}
            for name in {*MIRROR_FILES} - set(names):
                (local / name).unlink(missing_ok=True)
            # the exec_status files of the iteration state.txt is at and of the next (all the pass reads):
            # guessed from the copy here, then made sure of once the new state.txt is here
            files = [n for n in MIRROR_FILES if n in names] + _status_names(_observed_g(local, node) or None, names)
            segments = {a.filename: a for a in listed if a.filename.endswith(".wal") and a.is_regular()}
            summary = self._summary_wanted(local / "wal", listed)
            got = self._mirror(sftp, node, root, local, names, files, summary)
            g = _observed_g(local, node)
            needed = [n for n in (f"exec_status_{g}.txt", f"exec_status_{g + 1}.txt") if n in names]
            self._mirror(sftp, node, root, local, names, [n for n in needed if n not in files], None)
            for stale in local.glob("exec_status_*"):
                if stale.name not in needed:
                    stale.unlink()
            if summary is not None:
                self._keep_summary(local / "wal", got[-1])
            for stale in (local / "wal").glob("*.wal"):
                if stale.name not in segments:
                    stale.unlink()
            self._fetch_segments(sftp, f"{root}/wal", local / "wal", segments)
        return local

    def _mirror(
        self,
        sftp: Sftp,
        node: str,
        root: str,
        local: Path,
        names: dict[str, Entry],
        files: list[str],
        summary: Entry | None,
    ) -> list[bytes | OSError]:
        """Copy the control ``files`` (as listed in ``names``) here, and read the WAL's ``summary`` with
        them, in one step; what was read, in that order."""
        for name in files:
            _check_remote(node, f"{root}/{name}", names[name])
        wanted = [(f"{root}/{n}", names[n].st_size or 0, LIMITS["control"]) for n in files]
        if summary is not None:
            wanted.append((f"{root}/wal/{SUMMARY_NAME}", summary.st_size or 0, LIMITS["json"]))
        if not wanted:
            return []
        got = sftp.read_files(wanted)
        for name, data in zip(files, got, strict=False):
            if isinstance(data, FileNotFoundError):  # gone since the listing: as if not listed
                (local / name).unlink(missing_ok=True)
                continue
            if isinstance(data, OSError):
                raise data
            if len(data) > LIMITS["control"]:
                raise IntegrityError(f"{node}:{root}/{name}", f"is over the {LIMITS['control']}-byte limit")
            target = local / name
            if not target.exists() or target.read_bytes() != data:
                atomic_write(target, data, durable=False)
        return got

    def _summary_wanted(self, local: Path, listed: list[Entry]) -> Entry | None:
        """The summary the node's WAL writer keeps, to mirror into a cold mirror (no segment yet), so
        that a first pass over the mirror can start from it (it is adopted only if the mirrored
        segments match it byte for byte). Not a regular file, or over the limit for JSON documents:
        not fetched, and the pass reads the WAL whole."""
        (local / SUMMARY_NAME).unlink(missing_ok=True)
        if any(local.glob("*.wal")):
            return None
        found = next((a for a in listed if a.filename == SUMMARY_NAME), None)
        if found is None or not found.is_regular() or (found.st_size or 0) > LIMITS["json"]:
            return None
        return found

    @staticmethod
    def _keep_summary(local: Path, data: bytes | OSError) -> None:
        if isinstance(data, FileNotFoundError):
            return  # replaced between the listing and the read: a hint missed, nothing more
        if isinstance(data, OSError):
            raise data
        if len(data) <= LIMITS["json"]:
            atomic_write(local / SUMMARY_NAME, data, durable=False)

    def _fetch_segments(self, sftp: Sftp, remote: str, local: Path, segments: dict[str, Entry]) -> None:
        """Append what each remote segment gained; fetch one whole when the copy here is not its
        beginning (a repair cut it, or it was replaced)."""
        names = sorted(segments)
        handles = sftp.open_many([f"{remote}/{n}" for n in names])
        try:
            for handle in handles:
                if isinstance(handle, OSError):
                    raise handle
            opened = dict(zip(names, (h for h in handles if isinstance(h, bytes)), strict=True))
            have = {n: (local / n).stat().st_size if (local / n).exists() else 0 for n in names}
            probes = {
                n: Range(f"{remote}/{n}", opened[n], have[n] - min(have[n], 512), have[n])
                for n in names
                if 0 < have[n] <= (segments[n].st_size or 0)
            }
            sftp.copy(list(probes.values()))
            start = dict.fromkeys(names, 0)
            for name, probe in probes.items():
                with open(local / name, "rb") as mine:
                    mine.seek(probe.start)
                    if mine.read(probe.stop - probe.start) == probe.result():  # still its beginning
                        start[name] = have[name]
            with ExitStack() as files:
                copies = []
                for name in names:
                    size = segments[name].st_size or 0
                    if start[name] == have[name] == size:
                        continue
                    out = files.enter_context(open(local / name, "r+b" if start[name] else "wb"))
                    out.seek(start[name])
                    copies.append((Range(f"{remote}/{name}", opened[name], start[name], size, sink=out.write), out))
                sftp.copy([span for span, _ in copies])
                for span, out in copies:
                    if span.error is not None:
                        raise span.error
                    out.truncate()
        finally:
            sftp.close_later([h for h in handles if isinstance(h, bytes)])

    # -- commands -------------------------------------------------------------------------------

    def _exec(self, node: str, command: str, timeout: float, stdin: bytes | None = None) -> Completed:
        conn = self._conn(node)
        try:
            chan = conn.client.get_transport().open_session(timeout=self.connect_timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                elif chan.exit_status_ready():
                    while chan.recv_ready():
                        out += chan.recv(65536)
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                    break
                elif chan.closed or not chan.get_transport().is_active():
                    raise EOFError("the connection closed before the command finished")
                elif time.monotonic() > deadline:
                    chan.close()
                    return Completed(124, out.decode(errors="replace"), f"timed out after {timeout:g} s")
                else:
                    time.sleep(0.002)
            code = chan.recv_exit_status()
            chan.close()
            if code == -1:  # paramiko's word for "the channel closed without an exit status"
                raise EOFError("the connection closed before the command finished")
        except (TimeoutError, OSError, EOFError) as exc:
            self._drop(node)
            raise ssh_error(node, "the connection broke during a command", exc) from exc
        except Exception as exc:  # noqa: BLE001 - paramiko's SSHException family
            self._drop(node)
            raise ssh_error(node, "the command could not run", exc) from exc
        return Completed(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def open_stream(self, node: str, words: list[str]) -> Any:
        """Start the node's haios with ``words`` on a channel of its own and return the channel, for a
        conversation of many requests (replication); the caller reads and writes it and closes it."""
        self._compatible(node)
        conn = self._conn(node)
        try:
            chan = conn.client.get_transport().open_session(timeout=self.connect_timeout)
            chan.exec_command(quote_command([*self.remote, *words]))
        except Exception as exc:  # noqa: BLE001 - paramiko's SSHException family and socket errors
            self._drop(node)
            raise ssh_error(node, "cannot start a command", exc) from exc
        return chan

    def exchange(self, node: str, *, command: list[str], handler: Handler, timeout: float | None = None) -> SshExchange:
        """``haios --output json COMMAND ROOT`` on the node, on a channel kept open for many requests."""
        words = ["--output", "json", *command, self.spec(node).root]
        return SshExchange(self, node, words, self.connect_timeout if timeout is None else timeout)

    def version(self, node: str) -> str:
        """The version of haios on the node (``haios --version``), asked once per transport."""
        if node not in self._versions:
            # a command, not a handshake: a loaded node may take a few seconds to start an interpreter,
            # so it gets the read timeout (3x the connect timeout), not the connect timeout itself
            done = self._exec(node, quote_command([*self.remote, "--version"]), self.io_timeout)
            words = done.stdout.split()
            if done.returncode == 124:
                raise TransportError(
                    f"{node}: haios on the node did not answer 'haios --version' within {self.io_timeout:g} s",
                    hint="check the node's load, or raise HAIOS_SSH_TIMEOUT (the probe waits 3x as long)",
                )
            if done.returncode != 0 or len(words) != 2 or words[0] != "haios":
                raise TransportError(
                    f"{node}: haios is not installed on the node, or does not answer 'haios --version' "
                    f"(exit {done.returncode}: {' '.join((done.stderr or done.stdout).split())[:200]})",
                    hint="install haios on the node (the same version as here), or set HAIOS_REMOTE_COMMAND",
                )
            self._versions[node] = words[1]
        return self._versions[node]

    def _compatible(self, node: str) -> None:
        """Refuse to let a node's haios of another major.minor version act on it."""
        theirs = self.version(node)
        if compatible(theirs, __version__):
            return
        raise TransportError(
            f"{node}: haios {theirs} on the node, {__version__} here: not compatible (major.minor differ)",
            hint=f"install haios {__version__} on the node",
        )

    def call(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        """``haios --output json node recover ROOT`` with the request on stdin; errors raised there
        arrive here as the same HaiosError classes."""
        _check_request(request)
        self._compatible(node)
        root = self.spec(node).root
        command = quote_command([*self.remote, "--output", "json", "node", "recover", root])
        done = self._exec(node, command, self.command_timeout, stdin=json.dumps(request).encode())
        return _result(node, root, done)

    def provision(self, node: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Create the node's root (``haios node init`` on the node, the policy on stdin); an existing
        root is left as it is."""
        self._compatible(node)
        spec = self.spec(node)
        command = quote_command([*self.remote, "--output", "json", "node", "init", spec.root, "--name", spec.name])
        done = self._exec(node, command, self.command_timeout, stdin=json.dumps(policy).encode())
        return _result(node, spec.root, done)

    def run(self, node: str, argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> Completed:
        """Run ``argv`` in the node root; ``haios`` as the first word is the node's haios."""
        if not argv:
            raise UsageError("an empty command")
        for name in env or {}:
            if not re.match(r"^[A-Z_][A-Z0-9_]*$", name):
                raise UsageError(f"environment variable name {name!r} is not allowed")
        words = [*self.remote, *argv[1:]] if argv[0] == "haios" else list(argv)
        assignments = [f"{k}={v}" for k, v in (env or {}).items()]
        command = f"cd {shlex.quote(self.spec(node).root)} && " + quote_command(
            ["env", *assignments, *words] if assignments else words
        )
        return self._exec(node, command, timeout)


def _check_remote(node: str, path: str, attrs: Any) -> None:
    """A node file haios mirrors or reads is a regular file within the control-file limit (a FIFO
    would hang the read until the I/O timeout; a huge file would fill the mirror): else IntegrityError."""
    mode = getattr(attrs, "st_mode", None)
    if mode is not None and not stat.S_ISREG(mode):
        raise IntegrityError(f"{node}:{path}", "is not a regular file (a FIFO, a device or a directory)")
    size = getattr(attrs, "st_size", None) or 0
    if size > LIMITS["control"]:
        raise IntegrityError(f"{node}:{path}", f"is {size} bytes, over the {LIMITS['control']}-byte limit")


def _observed_g(local: Path, node: str) -> int:
    """The iteration the observation takes the node to be at from its ``state.txt`` here (as
    :func:`haios.ops.observe.observe_node` takes it: 0 for one it cannot read, of the wrong shape or
    another node's), whose ``exec_status`` file and the next one's it reads."""
    try:
        body, _ = controlfile.read_mapping(local / "state.txt")
    except HaiosError:
        return 0
    if shapes.problem_for("state.txt", body, node) is not None:
        return 0
    return int(body.get("g") or 0)


def _status_names(g: int | None, names: dict[str, Entry]) -> list[str]:
    """The listed ``exec_status`` files of iterations g, g + 1 and g + 2 (the last in case the node
    moved on since its state.txt was copied here); without g (a mirror with no state.txt yet), of the
    two latest iterations listed."""
    if g is None:
        listed = sorted(int(m.group(1)) for n in names if (m := _EXEC_STATUS.fullmatch(n)))
        return [f"exec_status_{i}.txt" for i in listed[-2:]]
    return [n for n in (f"exec_status_{i}.txt" for i in (g, g + 1, g + 2)) if n in names]


_EXEC_STATUS = re.compile(r"exec_status_(0|[1-9][0-9]{0,18})\.txt")
_TRANSPORT: Any = None


def _transport_class() -> Any:
    """paramiko's Transport, with AES-GCM preferred (the cipher's own authentication, checked in C,
    instead of AES-CTR with an HMAC that paramiko compares byte by byte in Python) and Nagle's
    algorithm off (a key exchange is a series of small messages, each of which would otherwise wait
    for the last one's acknowledgement: a connection on loopback took 60 ms, now 16). Every cipher
    paramiko offers is still offered: a server without AES-GCM gets what it got before."""
    global _TRANSPORT
    if _TRANSPORT is None:
        import paramiko

        class Transport(paramiko.Transport):
            def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
                with suppress(OSError, AttributeError):  # not a TCP socket: a proxy command
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                super().__init__(sock, *args, **kwargs)
                options = self.get_security_options()
                options.ciphers = tuple(sorted(options.ciphers, key=lambda name: "-gcm@" not in name))

        _TRANSPORT = Transport
    return _TRANSPORT


def _tcp_keepalive(sock: Any, idle: float) -> None:
    """Let the kernel notice a peer that vanished (a cut link sends no reset): probes after ``idle``
    seconds of silence, three of them a second apart, and no sent data left unacknowledged for longer
    than that; then the connection fails."""
    import contextlib
    import socket

    # not a TCP socket (a proxy command): paramiko's own keepalive is all there is
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        options = (
            ("TCP_KEEPIDLE", max(1, int(idle))),
            ("TCP_KEEPINTVL", 1),
            ("TCP_KEEPCNT", 3),
            ("TCP_USER_TIMEOUT", int((idle + 3) * 1000)),  # also when data waits unacknowledged
        )
        for option, value in options:
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"${name}={text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise UsageError(f"${name}={text!r} must be between 0 and 3600 seconds")
    return value


def compatible(theirs: str, ours: str) -> bool:
    """Same major and minor version: the node operations and their JSON are the same."""
    return theirs.split(".")[:2] == ours.split(".")[:2]


def _connect_hint(exc: BaseException | None, spec: NodeSpec) -> str:
    """What to do about a connection that failed: a name that does not resolve or a port nobody
    listens on is a question of the address in haios.yaml, not of the node root."""
    where = f"nodes[{spec.name}] in haios.yaml"
    if isinstance(exc, socket.gaierror):
        return (
            f"the address {spec.address!r} does not resolve: correct address in {where}, or add it to DNS or /etc/hosts"
        )
    # paramiko gathers the refusals of every address a name resolves to (NoValidConnectionsError.errors)
    causes = list(getattr(exc, "errors", {}).values()) or [exc]
    if all(isinstance(c, ConnectionRefusedError) for c in causes):
        return f"nothing listens on {spec.address}:{spec.port}: check address and port in {where}, and that sshd runs on the node"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer from {spec.address}:{spec.port}: check that the node is up and a firewall lets ssh through (address and port in {where})"
    return "check that the node is up and sshd listens there"


def _ssh_words() -> tuple[tuple[type[BaseException], str], ...]:
    """paramiko's and the socket layer's errors in words, the first class that matches wins; the
    exception itself stays the TransportError's cause (``raise ... from exc``)."""
    import paramiko  # (loaded already: the error came from an SSH connection)

    return (
        (socket.gaierror, "the name does not resolve"),
        (ConnectionRefusedError, "connection refused"),
        (TimeoutError, "timed out"),
        (paramiko.AuthenticationException, "authentication failed"),
        (paramiko.ChannelException, "the server refused a channel"),
        (EOFError, "the connection closed"),
    )


def _why(exc: BaseException | None) -> str:
    """What went wrong, in words (:func:`_ssh_words`; anything else: its class and message)."""
    if exc is None:
        return "unknown error"
    causes = list(getattr(exc, "errors", {}).values())  # paramiko's NoValidConnectionsError: one per address
    if causes and all(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    for cls, words in _ssh_words():
        if isinstance(exc, cls):
            if isinstance(exc, socket.gaierror):
                return f"{words} ({exc.strerror or exc})"
            if cls in (ConnectionRefusedError, TimeoutError):
                return words
            text = " ".join(str(exc).split())
            return f"{words}: {text}" if text and text != words else words
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def ssh_error(node: str, doing: str, exc: BaseException, *, hint: str | None = None) -> TransportError:
    """The TransportError for a paramiko or socket error while ``doing`` something with ``node``
    (raise it ``from exc``: the cause stays attached)."""
    return TransportError(f"{node}: {doing}: {_why(exc)}", hint=hint)


_ALIVE = ALIVE.encode()


class SshExchange:
    """A conversation with a server on an SSH node: one channel, kept open, one JSON line each way per
    request; the answer is waited for as long as the server sends an ALIVE line at least every
    ``timeout`` seconds."""

    def __init__(self, transport: SshTransport, name: str, words: list[str], timeout: float) -> None:
        self.name = name
        self.transport = transport  # it owns the connection and the pinned host key
        self.words = words
        self.timeout = timeout
        self._lock = threading.Lock()
        self._stream: tuple[Any, Iterator[bytes]] | None = None

    def _open(self) -> tuple[Any, Iterator[bytes]]:
        """The channel and its answers, line by line. Requests go out with ``sendall`` and answers come
        in with ``recv``, unbuffered by paramiko, so nothing is left to flush into a channel that broke."""
        if self._stream is None:
            channel = self.transport.open_stream(self.name, self.words)
            # the first answer also waits for the server to start (an interpreter on a loaded node)
            channel.settimeout(max(self.timeout, self.transport.io_timeout))
            self._stream = (channel, _lines(channel, self.name))
        return self._stream

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                channel, lines = self._open()
                channel.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
                line = next(lines, b"")
                while line == _ALIVE:  # the node is still at it: each line restarts the wait
                    line = next(lines, b"")
            except HaiosError:
                self.close()
                raise
            except Exception as exc:  # noqa: BLE001 - paramiko and socket errors of every kind
                self.close()
                raise ssh_error(self.name, "the conversation with the node broke", exc) from exc
            if not line:
                problem = (
                    channel.recv_stderr(4096).decode(errors="replace").strip() if channel.recv_stderr_ready() else ""
                )
                self.close()
                raise TransportError(
                    f"{self.name}: the server on the node ended{': ' + ' '.join(problem.split())[:200] if problem else ''}"
                )
            try:
                answer = json.loads(line)
            except ValueError:
                self.close()
                raise TransportError(f"{self.name}: unexpected answer from the node: {line[:200]!r}") from None
            channel.settimeout(self.timeout)  # the server is up: from now on, its own timeout
        if not isinstance(answer, dict):
            raise TransportError(f"{self.name}: unexpected answer from the node: {line[:200]!r}")
        if isinstance(answer.get("error"), dict):
            raise remote_error(self.name, answer["error"])
        return answer

    def close(self) -> None:
        """End the conversation and the connection to the node (the next request opens both again)."""
        if self._stream is not None:
            channel, _ = self._stream
            self._stream = None
            with suppress(Exception):  # closing a broken channel may fail; it is gone either way
                channel.close()
        self.transport.disconnect(self.name)


def _lines(channel: Any, name: str) -> Iterator[bytes]:
    """The lines a channel sends, each with its newline; the last one without, if the channel ends
    in the middle of it; nothing more once it ended (``recv`` times out as the channel says)."""
    buffer = b""
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line, buffer = buffer[: end + 1], buffer[end + 1 :]
            yield line
            continue
        if len(buffer) > LIMITS["json"]:
            raise TransportError(f"{name}: an answer longer than any haios sends (over {LIMITS['json']} bytes)")
        chunk = channel.recv(65536)
        if not chunk:
            if buffer:
                yield buffer
            return
        buffer += chunk


def _result(node: str, root: str, done: Completed) -> dict[str, Any]:
    """The node's JSON answer, or its error raised here as the class it was raised as there."""
    text = done.stdout.strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if done.returncode == 0 and isinstance(data, dict) and "error" not in data:
        return data
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        raise remote_error(node, data["error"])
    if done.returncode == 127 or "command not found" in done.stderr or "No such file" in done.stderr:
        raise TransportError(
            f"{node}: haios is not installed on the node ({' '.join(done.stderr.split())[:200]})",
            hint="install haios on the node (pip install haios) or set HAIOS_REMOTE_COMMAND",
        )
    raise TransportError(
        f"{node}: unexpected answer (exit {done.returncode}): {' '.join((done.stderr or text).split())[:300]}"
    )


def remote_error(node: str, error: dict[str, Any]) -> HaiosError:
    """Rebuild the HaiosError a node reported, as the class it was raised as there."""
    return from_wire(error, node=node)
