"""Control files (SPEC §2.2, fixed format): small integrity-protected, versioned state files.

A control file is strict UTF-8 text (no BOM) followed by exactly one footer line::

    #haios v=<decimal version> sha256=<64 lowercase hex>\\n

where the hash is SHA-256 over the body bytes followed by the ASCII text ``v=<version>``. A file
without a valid footer is corrupt and is never silently accepted.

Every write states the version it expects (``None``: the file must not exist yet) and produces the
next one; a mismatch raises :class:`~haios.errors.VersionConflict`. The check and the replacement
happen under the directory lock of :mod:`haios.fsutil`, so two writers can never both succeed from
the same version.

>>> data = encode(b"node: n1\\n", 3)
>>> decode(data, "state.txt").version
3
"""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import json
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config.yamlload import load_yaml, resolve_plain
from .errors import ControlFileError, ControlFileMissing, InputError, IntegrityError, VersionConflict, YamlRejected
from .fsutil import locked_dir, replace_in_dir
from .untrusted import INT_BOUND, MAX_DEPTH, nests_deeper, read_file

MAX_SIZE = 16 * 1024 * 1024
"""Largest control file haios reads; anything bigger is refused before it is read."""

MAX_VERSION = 10**18 - 1
"""Versions have at most 18 decimal digits."""

_FOOTER = re.compile(rb"#haios v=(0|[1-9][0-9]{0,17}) sha256=([0-9a-f]{64})\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ControlFile:
    """A verified control file: its body and its version."""

    path: Path
    body: bytes
    version: int

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def _digest(body: bytes, version: int) -> str:
    return hashlib.sha256(body + b"v=" + str(version).encode("ascii")).hexdigest()


def encode(body: bytes, version: int) -> bytes:
    """Return the bytes of a control file holding ``body`` at ``version``."""
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"a control file version is between 0 and {MAX_VERSION}")
    if body and not body.endswith(b"\n"):
        raise ValueError("a control file body must end with a newline")
    if body.startswith(_BOM):
        raise ValueError("a control file body must not start with a byte-order mark")
    body.decode("utf-8")  # strict: raises UnicodeDecodeError on invalid bytes
    return body + b"#haios v=%d sha256=%s\n" % (version, _digest(body, version).encode("ascii"))


def decode(data: bytes, path: Path | str) -> ControlFile:
    """Verify ``data`` as a control file; raise :class:`IntegrityError` naming ``path`` if not."""
    if not data.endswith(b"\n"):
        raise IntegrityError(path, "no integrity footer (the file is truncated or not a control file)")
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    body, footer = data[:cut], data[cut:]
    match = _FOOTER.fullmatch(footer)
    if match is None:
        raise IntegrityError(path, "integrity footer is missing or malformed")
    version = int(match.group(1))
    if _digest(body, version) != match.group(2).decode("ascii"):
        raise IntegrityError(path, f"integrity check failed: sha256 does not match the body (v={version})")
    if body.startswith(_BOM):
        raise IntegrityError(path, "body starts with a byte-order mark")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError(path, f"body is not valid UTF-8 at byte {exc.start}") from exc
    return ControlFile(Path(path), body, version)


def _read_bytes(path: Path, dir_fd: int | None = None) -> bytes | None:
    """The file's bytes, or ``None`` when it does not exist. Only a regular file is read (a symlink,
    a FIFO or a device in its place is an integrity failure, found without blocking on it), and one
    over :data:`MAX_SIZE` is refused before a byte of it is read."""
    try:
        return read_file(path.name if dir_fd is not None else path, path, MAX_SIZE, "control files", dir_fd)
    except InputError as exc:  # not a regular file, or too big: a control file haios never wrote
        raise IntegrityError(path, exc.reason) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(path, "is a symlink; a control file is a regular file in its node root") from exc
        raise ControlFileError(path, f"cannot read: {os.strerror(exc.errno or 0)}") from exc


def read(path: Path | str) -> ControlFile:
    """Read and verify the control file at ``path``."""
    p = Path(path)
    data = _read_bytes(p)
    if data is None:
        raise ControlFileMissing(p, "no such control file")
    return decode(data, p)


def current_version(path: Path | str) -> int | None:
    """The verified version of the file at ``path``, or ``None`` if it does not exist."""
    p = Path(path)
    data = _read_bytes(p)
    return None if data is None else decode(data, p).version


def write(path: Path | str, body: bytes | str, *, expected_version: int | None) -> int:
    """Replace the control file at ``path`` with ``body``; return the new version.

    ``expected_version`` is the version the caller read (``None``: the file must not exist). The
    comparison and the replacement are atomic with respect to other haios writers. A corrupt
    existing file raises :class:`IntegrityError` rather than being overwritten unseen.
    """
    p = Path(path)
    raw = body.encode("utf-8") if isinstance(body, str) else body
    with locked_dir(p.parent) as dir_fd:
        data = _read_bytes(p, dir_fd)
        actual = None if data is None else decode(data, p).version
        if actual != expected_version:
            raise VersionConflict(p, expected=expected_version, actual=actual)
        new_version = 1 if actual is None else actual + 1
        replace_in_dir(dir_fd, p.parent, p.name, encode(raw, new_version))
    return new_version


# -- YAML mapping bodies (haios's own control files) ---------------------------------------------


def dump_mapping(mapping: dict[str, Any]) -> bytes:
    """Serialise a mapping as the YAML body of a control file (block style, key order kept; a value
    used twice is written twice, never as an anchor and alias, which readers refuse)."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    yaml.representer.ignore_aliases = lambda data: True
    buf = io.StringIO()
    yaml.dump(mapping, buf)
    return buf.getvalue().encode("utf-8")


JSON_BODY_FROM = 2048
"""A mapping of plain values (see :func:`_plain`) whose body would be at least this many bytes is
written in YAML's JSON style (flow mappings and sequences, double-quoted strings: YAML all the
same), which is read back by the JSON parser in C — a policy or replication file listing hundreds
of members parses in a fraction of a millisecond instead of tens."""


def _json_text(mapping: dict[str, Any]) -> bytes:
    """A mapping of plain values as a body in JSON style, one item a line."""
    return (json.dumps(mapping, ensure_ascii=True, indent=0, allow_nan=False) + "\n").encode("ascii")


def _from_json_body(body: bytes) -> dict[str, Any] | None:
    """The mapping of a body :func:`write_mapping` wrote in JSON style: exactly the dump of plain values
    (so no duplicate key, escape or number the YAML reading would take otherwise); None for any
    other body, which is read as YAML."""
    if nests_deeper(body, MAX_DEPTH):
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (a 4,300-digit integer is a ValueError too)
        return None
    if type(value) is not dict or len(body) < JSON_BODY_FROM or not _plain(value) or _json_text(value) != body:
        return None
    return value


# A line of a block mapping whose every line is one of these, in the shapes haios's dump gives them:
# "key: value" or "key:" (null, or a mapping on the lines below, two spaces further in)
_BLOCK_LINE = re.compile(r"((?:  )*)([A-Za-z0-9_][A-Za-z0-9_.-]*):(?: (.+))?")
_BLOCK_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a word: a number, a boolean, null or a string
_BLOCK_QUOTED = re.compile(r"'((?:[!-&(-~](?:[ -&(-~]*[!-&(-~])?)?)'")  # no quote inside, no space at an end
_NOT_SIMPLE: Any = object()


def _block_scalar(text: str) -> Any:
    """The value of one of the simple scalars (see :func:`_from_block_body`), _NOT_SIMPLE for others."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    quoted = _BLOCK_QUOTED.fullmatch(text)
    if quoted is not None:
        return quoted.group(1)
    if _BLOCK_PLAIN.fullmatch(text):
        try:
            return resolve_plain(text)  # the desired-state reading of a plain scalar, the same function
        except ValueError:  # an integer over 64 bits: the YAML reading says so, with its position
            return _NOT_SIMPLE
    return _NOT_SIMPLE


def _from_block_body(body: bytes) -> dict[str, Any] | None:
    """The mapping of a body in the simplest block style, read line by line; None for any other body,
    which the YAML parser reads. Every line is ``key: value`` or ``key:``, nested two spaces a level;
    keys are words (letters, digits, ``_ . -``); a value is a word (resolved as the YAML reading
    resolves plain scalars), a single-quoted string of printable ASCII with no quote inside and no
    space at either end, ``{}`` or ``[]``. That is what haios writes for the small control files
    (``state.txt``, ``heartbeat``, ``exec_status_*``, ``fence``): read thirty times faster than by
    the YAML parser, with the same result (a property test holds both readings together). A
    duplicate key, a comment, a sequence, a flow collection, an escape or a number out of range is
    left to the YAML reading, which accepts it as YAML does or refuses it."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n"):
        return None
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(0, root)]
    opened: tuple[int, dict[str, Any], str] | None = None  # a "key:" line: its indent, mapping and key
    for line in text[:-1].split("\n"):
        match = _BLOCK_LINE.fullmatch(line)
        if match is None:
            return None
        indent, key, value = len(match.group(1)), match.group(2), match.group(3)
        if opened is not None and indent == opened[0] + 2:
            if len(stack) >= MAX_DEPTH:
                return None
            child: dict[str, Any] = {}
            opened[1][opened[2]] = child
            stack.append((indent, child))
        opened = None
        while stack[-1][0] > indent:
            stack.pop()
        depth, mapping = stack[-1]
        if depth != indent or key in mapping:
            return None
        if value is None:
            mapping[key] = None  # null, unless the lines below hold its mapping
            opened = (indent, mapping, key)
            continue
        scalar = _block_scalar(value)
        if scalar is _NOT_SIMPLE:
            return None
        mapping[key] = scalar
    return root


def load_mapping(cf: ControlFile) -> dict[str, Any]:
    """Parse a verified control file's body as a YAML mapping, by the same strict, bounded rules as
    the desired-state files (no tags or aliases, integers of 64 bits, nesting at most 64 deep); a
    body haios wrote in JSON style is read by the JSON parser, and one in the simplest block style
    line by line (the same mapping, faster)."""
    if not cf.body:
        return {}
    if cf.body[:1] == b"{":
        quick = _from_json_body(cf.body)
        if quick is not None:
            return quick
    elif len(cf.body) < JSON_BODY_FROM:
        simple = _from_block_body(cf.body)
        if simple is not None:
            return simple
    try:
        value = load_yaml(cf.body, str(cf.path), limit=MAX_SIZE).value
    except YamlRejected as exc:
        p = exc.problem
        raise ControlFileError(cf.path, f"body is not valid YAML (line {p.line}: {p.message})") from exc
    if not isinstance(value, dict):
        raise ControlFileError(cf.path, "body is not a YAML mapping")
    return value


def read_mapping(path: Path | str) -> tuple[dict[str, Any], int]:
    """Read a haios control file and return its mapping and version."""
    cf = read(path)
    return load_mapping(cf), cf.version


PARSED_BODY_BYTES = 8 * 1024 * 1024
"""How many bytes of control-file bodies the parsed ones kept by :func:`read_mapping_cached` may
come from, in all (the least recently read go first): a reconcile reads each node's files several
times, and the policy and replication files of a large cluster list every member."""
# path -> (version, body hash, body size, mapping)
_PARSED: OrderedDict[str, tuple[int, bytes, int, dict[str, Any]]] = OrderedDict()
_PARSED_LOCK = threading.Lock()
_parsed_bytes = 0


def read_mapping_cached(path: Path | str) -> tuple[dict[str, Any], int]:
    """:func:`read_mapping`, the body parsed again only when it changed: for a process that reads the
    same control files again and again (the node agent, its gossip server, a reconcile's steps),
    where parsing a large policy would be most of the work. Verified on every call; the caller gets
    its own copy."""
    cf = read(path)
    body_hash = hashlib.sha256(cf.body).digest()
    key = os.fspath(path)
    with _PARSED_LOCK:
        hit = _PARSED.get(key)
        if hit is not None and hit[0] == cf.version and hit[1] == body_hash:
            _PARSED.move_to_end(key)
            return copy.deepcopy(hit[3]), cf.version
    mapping = load_mapping(cf)
    _keep(key, cf.version, body_hash, len(cf.body), mapping)
    return copy.deepcopy(mapping), cf.version


def _keep(key: str, version: int, body_hash: bytes, size: int, mapping: dict[str, Any]) -> None:
    """Keep a parsed body, dropping the least recently read ones past :data:`PARSED_BODY_BYTES`."""
    global _parsed_bytes
    with _PARSED_LOCK:
        old = _PARSED.pop(key, None)
        _parsed_bytes -= old[2] if old is not None else 0
        _PARSED[key] = (version, body_hash, size, mapping)
        _parsed_bytes += size
        while _parsed_bytes > PARSED_BODY_BYTES and len(_PARSED) > 1:
            _parsed_bytes -= _PARSED.popitem(last=False)[1][2]


def write_mapping(path: Path | str, mapping: dict[str, Any], *, expected_version: int | None) -> int:
    """Write ``mapping`` as a haios control file; see :func:`write`. A mapping of plain JSON values
    is also what :func:`read_mapping_cached` will read back from the file while it stays as written
    (the body reads back as the mapping it was dumped from): it is kept, not parsed again."""
    plain = _plain(mapping)
    body = _json_text(mapping) if plain else b""
    if len(body) < JSON_BODY_FROM:
        body = dump_mapping(mapping)
    version = write(path, body, expected_version=expected_version)
    if plain and len(body) <= PARSED_BODY_BYTES:  # anything else is parsed when read back
        _keep(os.fspath(path), version, hashlib.sha256(body).digest(), len(body), copy.deepcopy(mapping))
    return version


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is made of the values a body reads back as exactly: printable ASCII strings
    (a line break or a C1 control may come back otherwise), booleans, None, 64-bit integers, finite
    floats, lists and mappings with such keys, nested within the limit."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return value.isascii() and value.isprintable()
    if isinstance(value, int):
        return -INT_BOUND <= value < INT_BOUND
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= MAX_DEPTH - 1:
        return False
    if type(value) is list:
        return all(_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _plain(k) and _plain(v, depth + 1) for k, v in value.items())
    return False
