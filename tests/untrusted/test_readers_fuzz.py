"""Property tests over haios's readers: whatever the bytes, a value or the documented error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from untrusted.hostile import TEXT

from haios import controlfile
from haios.config.yamlload import load_yaml
from haios.errors import ControlFileError, InputError, YamlRejected
from haios.node import shapes
from haios.untrusted import LIMITS, MAX_DEPTH, inert, json_object, load_json, nesting_depth, nests_deeper, read_regular

YAMLISH = st.one_of(
    st.binary(max_size=400),
    st.text(alphabet="{}[]:,-#&*!|>'\"\n 0123456789.eE+xa", max_size=400).map(str.encode),
)


@settings(max_examples=500)
@given(data=YAMLISH)
def test_property_yaml_loads_or_is_rejected(data: bytes) -> None:
    try:
        load_yaml(data, "f.yaml")
    except YamlRejected as exc:
        assert exc.problem.file == "f.yaml"


@settings(max_examples=500)
@given(data=YAMLISH)
def test_property_json_loads_or_input_error(data: bytes) -> None:
    try:
        load_json(data, "f.json")
    except InputError as exc:
        assert str(exc).startswith("f.json: ")


@settings(max_examples=300)
@given(data=YAMLISH)
def test_property_control_file_bodies_load_or_control_file_error(data: bytes) -> None:
    body = data if data.endswith(b"\n") or not data else data + b"\n"
    try:
        encoded = controlfile.encode(body, 3)
    except (ValueError, UnicodeDecodeError):
        return
    try:
        mapping = controlfile.load_mapping(controlfile.decode(encoded, "state.txt"))
    except ControlFileError:
        return
    for kind in shapes.SHAPES:
        shapes.problem(kind, mapping)  # never raises, whatever the types


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH + 1, 1000, 100_000])
def test_nesting_is_bounded_before_any_parser_recurses(depth: int) -> None:
    flow = b"a: " + b"[" * depth + b"]" * depth
    levels = min(depth, 1000)
    block = b"".join(b" " * i + b"a:\n" for i in range(levels)) + b" " * levels + b"1\n"
    js = b'{"a":' * depth + b"1" + b"}" * depth
    if depth < MAX_DEPTH:
        assert load_yaml(flow, "f").value is not None and load_json(js, "f") is not None
        return
    with pytest.raises(YamlRejected, match="nests deeper than 64 levels"):
        load_yaml(flow, "f")
    with pytest.raises(YamlRejected, match="nests deeper than 64 levels"):
        load_yaml(block, "f")
    with pytest.raises(InputError, match="nests deeper than 64 levels"):
        load_json(js, "f")


def test_depth_counting_skips_brackets_inside_strings() -> None:
    assert nesting_depth('{"a": "[[[[{{{{", "b": ["\\"[["]}') == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("g: " + "9" * 400, "integer 999999999999999999999999... is out of range"),
        ("g: 9223372036854775808", "integer 9223372036854775808 is out of range"),
        ("g: 0x10000000000000000", "is out of range"),
        ("g: -9223372036854775809", "is out of range"),
    ],
)
def test_integers_beyond_64_bits_are_rejected_with_their_position(text: str, message: str) -> None:
    with pytest.raises(YamlRejected, match=message) as caught:
        load_yaml(text.encode(), "f.yaml")
    assert (caught.value.problem.line, caught.value.problem.column) == (1, 4)
    assert load_yaml(b"g: -9223372036854775808\nh: 0x7fffffffffffffff\n", "f").value == {
        "g": -(2**63),
        "h": 2**63 - 1,
    }


def test_an_oversized_file_is_refused_before_a_byte_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:
        fh.truncate(LIMITS["desired"] + 1)  # sparse: its size is all that matters
    reads: list[int] = []
    real_read = os.read

    def counting(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting)
    with pytest.raises(InputError, match="over the 1048576-byte limit for desired files"):
        read_regular(big, "desired")
    assert reads == []


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_property_inert_text_has_no_control_characters(text: str) -> None:
    for newlines in (True, False):
        out = inert(text, newlines=newlines)
        allowed = {"\n", "\t"} if newlines else {"\t"}
        assert all(ch.isprintable() or ch in allowed for ch in out), repr(out)
        assert "\x1b" not in out and "\r" not in out


def test_every_corpus_file_through_every_text_reader() -> None:
    """The checked-in corpus through the low-level readers (the places are tried elsewhere)."""
    outcomes: dict[str, Any] = {}
    for f in TEXT:
        data = f.read_bytes()
        for name, reader in (("yaml", load_yaml), ("json", load_json)):
            try:
                reader(data, f.name)
                outcomes[f"{f.name}/{name}"] = "value"
            except (YamlRejected, InputError):
                outcomes[f"{f.name}/{name}"] = "refused"
    assert outcomes["deep-flow.yaml/yaml"] == outcomes["deep.json/json"] == "refused"
    assert outcomes["bigint.yaml/yaml"] == outcomes["bigint.json/json"] == outcomes["alias-bomb.yaml/yaml"] == "refused"


def _careful(data: bytes) -> Any:
    try:
        return load_json(data, "p")
    except InputError:
        return InputError


OBJECTISH = st.one_of(
    st.text(alphabet='{}[]:,"-0123456789.eE+ a\\u', max_size=300).map(lambda t: ("{" + t).encode()),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=30,
    ).map(lambda v: __import__("json").dumps({"v": v}, separators=(",", ":")).encode()),
)


@settings(max_examples=800)
@given(data=OBJECTISH)
def test_property_the_quick_json_path_agrees_with_the_careful_one(data: bytes) -> None:
    quick = json_object(data)
    if quick is not None:  # it answers only what the careful path accepts, with the same value
        assert _careful(data) == quick and isinstance(quick, dict)


@pytest.mark.parametrize(
    "text",
    [
        '{"n":9223372036854775807}',  # the largest 64-bit integer: 19 digits, the careful way
        '{"n":9223372036854775808}',  # one more: refused
        '{"n":-9223372036854775809}',
        '{"f":1e400}',  # overflows to infinity: refused
        '{"f":' + "9" * 400 + ".0}",
        '{"f":NaN}',
        '{"f":-Infinity}',
        '{"a":1} ',  # trailing whitespace: accepted, the careful way
        ' {"a":1}',
        '{"a":1}{"b":2}',  # two documents
        '{"a":1',
        "[1,2]",  # not an object
        '{"a":"\\ud800"}',
        '{"a":' + "[" * 70 + "]" * 70 + "}",  # deeper than 64
        '{"a":"' + "[" * 70 + '"}',  # brackets in a string only: accepted, the careful way
        '{"a":1,"a":2}',
        '{"id":"1234567890123456789012"}',  # a long digit run in a string: the careful way, same value
    ],
)
def test_the_quick_json_path_on_the_edges(text: str) -> None:
    data = text.encode()
    quick = json_object(data)
    careful = _careful(data)
    if careful is InputError or not isinstance(careful, dict):
        assert quick is None
    elif quick is not None:
        assert quick == careful
    assert json_object(b'{"g":1,"phase":"ANALYZE","ts":1796015367.25}') == {
        "g": 1,
        "phase": "ANALYZE",
        "ts": 1796015367.25,
    }


@settings(max_examples=1500)
@given(
    data=st.one_of(
        st.text(alphabet='[]{}"\\ a', max_size=60).map(str.encode),
        st.binary(max_size=60),
    ),
    limit=st.integers(min_value=0, max_value=4),
)
def test_property_the_quick_depth_verdict_is_the_byte_scan_s(data: bytes, limit: int) -> None:
    assert nests_deeper(data, limit) == (nesting_depth(data, limit) > limit)


def test_the_quick_depth_verdict_stays_linear_on_hostile_strings() -> None:
    # every quote after the first escaped: a string that never ends, half a megabyte long
    assert nests_deeper(b'"' + b'\\"' * 250_000) is False
    assert nests_deeper(b"[" * 65 + b'"' + b"]" * 100_000) is True
    assert nests_deeper(b'{"a":"' + b"[" * 1000 + b'"}') is False
