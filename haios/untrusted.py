"""Reading what other people and other machines wrote: bounded, typed, total.

Every file haios reads (the desired-state repo, ``status/``, a node root, a WAL segment's header) may
have been written by an attacker: a pull request nobody approved, a backup restored by hand, a node
that was taken over. The rules here make one hostile file one finding, never the end of a run:

- :func:`read_regular` opens a file without following a symlink out of its directory, refuses
  anything that is not a regular file (a FIFO, a device, a directory) without blocking on it, and
  checks the size on the open descriptor (``fstat``) against the kind's limit *before* reading; it
  then reads at most limit + 1 bytes, so a file that grows while it is read is refused too.
- :func:`load_json` parses JSON with its nesting depth checked before the parser recurses, integers
  bounded to 64 bits and floats finite.
- :func:`inert` makes any text safe to print or to put into a commit message: control characters and
  terminal escapes are shown as visible ``\\xNN`` escapes, so a node name or a compensator's stderr
  can never move a cursor, clear a screen or forge a line of its own.

The limits, by kind (:data:`LIMITS`), are documented in docs/security.md.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from itertools import accumulate
from pathlib import Path
from typing import Any

from .errors import InputError

KIB = 1024
MIB = 1024 * KIB

LIMITS: dict[str, int] = {
    "desired": 1 * MIB,  # haios.yaml, desired/, policies/, playbooks/, overrides/, schemas/
    "status": 16 * MIB,  # status/: journals, applied overrides, caches, run records
    "control": 16 * MIB,  # a node's control files (state.txt, heartbeat, ...)
    "json": 16 * MIB,  # a JSON document haios keeps (a cache, a plan file)
    "key": 64 * KIB,  # an SSH key or signature file
}
"""Largest file of each kind haios reads; a bigger one is refused unread."""

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings haios accepts in YAML or JSON it reads."""

INT_BOUND = 2**63
"""Integers haios reads lie in [-2**63, 2**63): a 400-digit number is an error, not an overflow later."""


def read_regular(path: Path | str, kind: str, *, within: Path | None = None) -> bytes | None:
    """The bytes of the regular file at ``path``, or ``None`` when it does not exist.

    A symlink is followed only when it resolves inside ``within`` (default: the file's own
    directory). Anything that is not a regular file, or larger than ``LIMITS[kind]``, raises
    :class:`InputError` naming the file; nothing is read from it.
    """
    p = Path(path)
    limit = LIMITS[kind]
    target = p
    if p.is_symlink():
        base = (within if within is not None else p.parent).resolve()
        try:
            resolved = p.resolve(strict=True)
        except FileNotFoundError:
            return None
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise InputError(p, f"cannot follow the symlink: {exc}") from exc
        if not resolved.is_relative_to(base):
            raise InputError(p, f"is a symlink leaving {base.name or base}/ (to {resolved}); haios does not follow it")
        target = resolved
    try:
        return read_file(target, p, limit, f"{kind} files")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(p, "was replaced by a symlink while it was opened") from exc
        raise InputError(p, f"cannot read: {os.strerror(exc.errno or 0)}") from exc


def read_file(name: Path | str, path: Path, limit: int, what: str, dir_fd: int | None = None) -> bytes | None:
    """Every byte of the file ``name`` (relative to ``dir_fd`` when given), or None when it does not
    exist: only a regular file of at most ``limit`` bytes, the size checked with ``fstat`` before
    reading and again while reading; :class:`InputError` naming ``path`` otherwise. The last
    component is never followed if it is a symlink (an OSError with ELOOP), and opening a FIFO does
    not wait for a writer. OS errors pass through."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        return _read_descriptor(fd, path, limit, what)
    finally:
        os.close(fd)


def _read_descriptor(fd: int, path: Path, limit: int, what: str) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InputError(path, f"is not a regular file (it is a {_file_type(info.st_mode)})")
    if info.st_size > limit:
        raise InputError(path, f"is {info.st_size} bytes, over the {limit}-byte limit for {what}")
    chunks: list[bytes] = []
    left = limit + 1
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    if left <= 0:
        raise InputError(path, f"grew past the {limit}-byte limit for {what} while it was read")
    return b"".join(chunks)


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def is_number(value: object) -> bool:
    """An int or a float, not a bool (YAML and JSON give bools where a number was expected)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def in_repo(repo: Path, text: str) -> str:
    """``text`` with the repo's own path left out of the file names it gives (files as the repo names them)."""
    return text.replace(f"{repo}/", "")


def nesting_depth(text: str | bytes, limit: int = MAX_DEPTH) -> int:
    """How deep ``[`` and ``{`` nest in JSON (or flow YAML) text, outside strings; stops counting
    at ``limit`` + 1. Linear, iterative: safe for text a recursive parser would choke on."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # double quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif byte in (0x5D, 0x7D) and depth:  # ] }
            depth -= 1
    return deepest


# The depth with most of the work in C: the strings taken out (a regular expression; a string left
# open runs to the end, as in the byte-by-byte scan, and the possessive loop never backtracks, so the
# expression is linear), the brackets kept (translate), their running depth summed, never below zero.
# Only a text it puts over the limit is scanned byte by byte, for the verdict.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = tuple(1 if b in b"[{" else -1 for b in range(256))


def nests_deeper(text: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``[`` and ``{`` nest deeper than ``limit`` in ``text`` (:func:`nesting_depth`'s verdict,
    in a fraction of its time for the text of a large JSON file)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depths = list(accumulate(map(_STEP.__getitem__, brackets), initial=0))
    if min(depths) < 0:  # a closing bracket with none open: not JSON; the depth counts from zero again there
        depths = list(accumulate(map(_STEP.__getitem__, brackets), lambda depth, step: max(depth + step, 0), initial=0))
    return max(depths) > limit and nesting_depth(data, limit) > limit


_MAX_DIGITS = {10: 19, 8: 22, 16: 16}  # significant digits of the largest 64-bit magnitude, per base


def bounded_int(literal: str, digits: str | None = None, base: int = 10) -> int:
    """An integer literal in [-2**63, 2**63): JSON's, or YAML's decimal, ``0o`` and ``0x`` forms
    (``digits`` in ``base``, the sign taken from ``literal``). ValueError otherwise, checked before
    converting, so a number of a million digits costs nothing."""
    digits = literal.lstrip("+-") if digits is None else digits
    if len(digits.lstrip("0")) > _MAX_DIGITS[base]:
        raise ValueError(f"integer {literal[:24]}{'...' if len(literal) > 24 else ''} is out of range (64 bits)")
    value = int(digits, base) * (-1 if literal.startswith("-") else 1)
    if not -INT_BOUND <= value < INT_BOUND:
        raise ValueError(f"integer {literal} is out of range (64 bits)")
    return value


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:24]} is out of range")
    return value


def _no_constant(literal: str) -> Any:
    raise ValueError(f"{literal} is not allowed")


# the decoder with the checks of every number and constant, made once (json.loads with hooks builds a
# new one per call, which is most of the time a small payload takes)
_DECODER = json.JSONDecoder(parse_int=bounded_int, parse_float=_finite_float, parse_constant=_no_constant)


# No run of 19 digits or more (the first integer that may not fit 64 bits has 19): then integers need
# no check of their own, and the C scanner makes them with Python's int — what a WAL payload nearly
# always is. (The test also fires inside strings; that only sends a text the careful way.) Floats keep
# their check: a literal without an exponent cannot overflow, but telling one apart costs more than it.
_NUMBER_SHAPE = bytes.maketrans(b"123456789[", b"000000000{")
_NINETEEN_DIGITS = b"0" * 19
_SCAN_PLAIN = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant).scan_once  # type: ignore[attr-defined]


def json_object(data: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any] | None:
    """The JSON object ``data`` holds, when it is plainly one :func:`load_json` accepts — compact,
    an object, shallow, no integer near the limit — parsed the quick way; None when it is anything else
    (then :func:`load_json` decides, and names what is wrong). Never a different value than
    :func:`load_json` would give."""
    shape = data.translate(_NUMBER_SHAPE)  # every digit a 0, every [ a {
    if shape.count(b"{") > max_depth or _NINETEEN_DIGITS in shape:
        return None
    try:
        text = data.decode("utf-8")
        value, end = _SCAN_PLAIN(text, 0)
    except (ValueError, StopIteration, RecursionError):
        return None
    return value if end == len(text) and type(value) is dict else None


def load_json(data: bytes | str, name: str | Path, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON read from ``name``; any problem is an :class:`InputError` naming it (never a
    RecursionError, an OverflowError or a 4,300-digit integer)."""
    # the depth is at most the number of opening brackets: counting them (in C) spares most texts the
    # byte-by-byte scan (a WAL payload has a handful)
    opened = data.count(b"[") + data.count(b"{") if isinstance(data, bytes) else data.count("[") + data.count("{")
    if opened > max_depth and nests_deeper(data, max_depth):
        raise InputError(name, f"nests deeper than {max_depth} levels")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        raise InputError(name, reason, line=exc.lineno, column=exc.colno) from exc
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InputError(name, f"not valid JSON: {exc}") from exc


def read_json(path: Path | str, kind: str = "json", *, within: Path | None = None) -> Any:
    """:func:`read_regular` then :func:`load_json`; ``None`` when the file does not exist."""
    data = read_regular(path, kind, within=within)
    return None if data is None else load_json(data, path)


_VISIBLE = {0x09: "\t", 0x0A: "\n"}


def inert(text: object, *, newlines: bool = True) -> str:
    """``text`` with every control character (C0, DEL, C1; ESC included) shown as a visible escape.

    With ``newlines=False`` a line break is escaped too: for a value that must stay on one line (a
    commit message line, a trailer, a table cell).
    """
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        code = ord(ch)
        if (code in _VISIBLE and (newlines or code == 0x09)) or (ch.isprintable() and code not in (0x2028, 0x2029)):
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)
