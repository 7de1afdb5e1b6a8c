"""Strict YAML loading for the desired-state repo (SPEC §1).

The file is parsed with ruamel.yaml's parser and built into plain JSON-like values from the event
stream, so that everything SPEC §1 forbids is caught with its exact position before any value is
constructed: YAML tags, anchors and aliases, duplicate keys, non-scalar keys, several documents,
non-UTF-8 bytes and files over a size bound. Plain scalars are resolved with the YAML 1.2 core
schema (null, booleans, integers, floats); dates and times stay strings, for the schemas to check.
The position of every key and value is kept so that a schema error can name its line and column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError, Problem, YamlRejected
from ..untrusted import LIMITS, MAX_DEPTH, bounded_int, read_regular
from .problems import KeyPath, format_key_path

MAX_BYTES = LIMITS["desired"]
"""Largest desired-state file haios reads (1 MiB); bigger files are refused unread."""

_NULL = re.compile(r"~|null|Null|NULL|")
_TRUE = re.compile(r"true|True|TRUE")
_FALSE = re.compile(r"false|False|FALSE")
_INT10 = re.compile(r"[-+]?[0-9]+")
_INT8 = re.compile(r"0o[0-7]+")
_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_NONFINITE = re.compile(r"[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")


@dataclass
class YamlDoc:
    """A loaded file: its value plus the 1-based (line, column) of every key and value."""

    file: str
    value: Any
    key_pos: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    value_pos: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: KeyPath, *, prefer_key: bool = False) -> tuple[int, int]:
        """Where ``path`` is (or its nearest existing ancestor); the key rather than the value if asked."""
        p = tuple(path)
        while True:
            if prefer_key and p in self.key_pos:
                return self.key_pos[p]
            if p in self.value_pos:
                return self.value_pos[p]
            if p in self.key_pos:
                return self.key_pos[p]
            if not p:
                return (1, 1)
            p = p[:-1]

    def problem(self, path: KeyPath, message: str, *, prefer_key: bool = False) -> Problem:
        line, col = self.position(path, prefer_key=prefer_key)
        return Problem(self.file, line, col, format_key_path(path), message)

    def get(self, *path: str | int) -> Any:
        """The value at ``path``, or ``None`` when any part is missing."""
        cur = self.value
        for part in path:
            if isinstance(part, int):
                if not isinstance(cur, list) or part >= len(cur):
                    return None
            elif not isinstance(cur, dict) or part not in cur:
                return None
            cur = cur[part]
        return cur


def resolve_plain(text: str) -> Any:
    """A plain scalar by the YAML 1.2 core schema; ValueError for an integer out of range."""
    if _NULL.fullmatch(text):
        return None
    if _TRUE.fullmatch(text):
        return True
    if _FALSE.fullmatch(text):
        return False
    if _INT10.fullmatch(text):
        return bounded_int(text)
    if _INT8.fullmatch(text):
        return bounded_int(text, text[2:], 8)
    if _INT16.fullmatch(text):
        return bounded_int(text, text[2:], 16)
    if _FLOAT.fullmatch(text):
        value = float(text)
        if math.isfinite(value):
            return value
    return text


def _tag_text(tag: object) -> str:
    text = str(getattr(tag, "value", tag))
    return "!!" + text[len("tag:yaml.org,2002:") :] if text.startswith("tag:yaml.org,2002:") else text


class _Builder:
    def __init__(self, doc: YamlDoc, events: Iterator[Any]) -> None:
        self.doc = doc
        self.events = events

    def _pos(self, event: Any) -> tuple[int, int]:
        return (event.start_mark.line + 1, event.start_mark.column + 1)

    def _reject(self, event: Any, path: KeyPath, message: str) -> YamlRejected:
        line, col = self._pos(event)
        return YamlRejected(Problem(self.doc.file, line, col, format_key_path(path), message))

    def node(self, event: Any, path: KeyPath) -> Any:
        from ruamel.yaml import events as ev

        if isinstance(event, ev.AliasEvent):
            raise self._reject(event, path, f"anchors and aliases are not allowed (found alias *{event.anchor})")
        if getattr(event, "anchor", None):
            raise self._reject(event, path, f"anchors and aliases are not allowed (found anchor &{event.anchor})")
        if getattr(event, "tag", None) is not None:
            raise self._reject(event, path, f"YAML tags are not allowed (found {_tag_text(event.tag)})")
        self.doc.value_pos[path] = self._pos(event)
        if isinstance(event, ev.ScalarEvent):
            if event.style is None:
                if _NONFINITE.fullmatch(event.value):
                    raise self._reject(event, path, f"non-finite numbers are not allowed (found {event.value})")
                try:
                    return resolve_plain(event.value)
                except ValueError as exc:
                    raise self._reject(event, path, str(exc)) from None
            return event.value
        if len(path) >= MAX_DEPTH:
            raise self._reject(event, path[:3], f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(event, ev.SequenceStartEvent):
            items: list[Any] = []
            while not isinstance(nxt := next(self.events), ev.SequenceEndEvent):
                item_path = (*path, len(items))
                self.doc.key_pos[item_path] = self._pos(nxt)
                items.append(self.node(nxt, item_path))
            return items
        if isinstance(event, ev.MappingStartEvent):
            mapping: dict[str, Any] = {}
            while not isinstance(key_event := next(self.events), ev.MappingEndEvent):
                if not isinstance(key_event, ev.ScalarEvent) or getattr(key_event, "tag", None) is not None:
                    if isinstance(key_event, ev.AliasEvent) or getattr(key_event, "anchor", None):
                        raise self._reject(key_event, path, "anchors and aliases are not allowed")
                    raise self._reject(key_event, path, "mapping keys must be plain strings")
                if key_event.anchor:
                    raise self._reject(
                        key_event, path, f"anchors and aliases are not allowed (found anchor &{key_event.anchor})"
                    )
                key = key_event.value
                key_path = (*path, key)
                if key in mapping:
                    first_line, first_col = self.doc.key_pos[key_path]
                    raise self._reject(
                        key_event,
                        key_path,
                        f"duplicate key '{key}' (first defined at line {first_line}, column {first_col})",
                    )
                self.doc.key_pos[key_path] = self._pos(key_event)
                mapping[key] = self.node(next(self.events), key_path)
            return mapping
        raise self._reject(event, path, f"unexpected YAML event {type(event).__name__}")


def load_yaml(data: bytes, file: str, *, limit: int = MAX_BYTES) -> YamlDoc:
    """Load one YAML document from ``data``; raise :class:`YamlRejected` naming ``file`` if it is bad."""
    from ruamel.yaml import YAML
    from ruamel.yaml import events as ev
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    if len(data) > limit:
        raise YamlRejected(Problem(file, 1, 1, "(root)", f"file is {len(data)} bytes; the limit is {limit} bytes"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlRejected(
            Problem(file, line, col, "(root)", f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})")
        ) from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    doc = YamlDoc(file, None)
    try:
        # the plain parser: the round-trip one gathers comments (a third of the time) and marks the
        # line folds of a folded scalar (``>``) with BEL characters left in its value
        events = iter(YAML(typ="safe", pure=True).parse(text))
        next(events)  # StreamStart
        first = next(events)
        if isinstance(first, ev.StreamEndEvent):
            raise YamlRejected(Problem(file, 1, 1, "(root)", "file is empty"))
        builder = _Builder(doc, events)
        doc.value = builder.node(next(events), ())
        next(events)  # DocumentEnd
        after = next(events)
        if not isinstance(after, ev.StreamEndEvent):
            line, col = after.start_mark.line + 1, after.start_mark.column + 1
            raise YamlRejected(Problem(file, line, col, "(root)", "only one YAML document per file is allowed"))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        what = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise YamlRejected(Problem(file, line, col, "(root)", f"invalid YAML: {what}")) from exc
    except YAMLError as exc:
        raise YamlRejected(Problem(file, 1, 1, "(root)", f"invalid YAML: {' '.join(str(exc).split())}")) from exc
    except (RecursionError, StopIteration) as exc:  # a parser's own limits: the file is not usable YAML
        raise YamlRejected(Problem(file, 1, 1, "(root)", f"invalid YAML ({type(exc).__name__})")) from exc
    return doc


def load_yaml_file(path: Path, file: str, kind: str = "desired", *, within: Path | None = None) -> YamlDoc | None:
    """Read ``path`` as a ``kind`` file (regular, bounded: see :mod:`haios.untrusted`) and load it;
    ``None`` when it does not exist. Every problem is a :class:`YamlRejected` naming ``file``."""
    try:
        data = read_regular(path, kind, within=within)
    except InputError as exc:
        raise YamlRejected(Problem(file, 1, 1, "(root)", exc.reason)) from exc
    return None if data is None else load_yaml(data, file, limit=LIMITS[kind])


def load_status(path: Path, what: str, restore: str) -> Any:
    """A YAML file haios keeps under ``status/`` (None when it does not exist). One that cannot be
    read or parsed is a ConfigError naming it as ``what``, with the git command that restores
    ``restore`` (the file's or its directory's path in the repo)."""
    try:
        doc = load_yaml_file(path, str(path), "status", within=path.parent)
    except YamlRejected as exc:
        p = exc.problem
        raise ConfigError(
            f"{path}: not {what} (line {p.line}, column {p.column}: {p.message})",
            hint=f"restore it from git (git checkout -- {restore})",
        ) from exc
    return None if doc is None else doc.value
