"""Control files (SPEC §2.2): format, integrity, versioned atomic writes, crash safety."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.zygote import Zygote
from hypothesis import given, settings
from hypothesis import strategies as st

from haios import controlfile
from haios.config.yamlload import load_yaml
from haios.errors import (
    ControlFileError,
    ControlFileMissing,
    HaiosError,
    IntegrityError,
    StorageError,
    VersionConflict,
    YamlRejected,
)
from haios.fsutil import temp_name

PROJECT = Path(__file__).parent.parent


def test_encode_footer_is_the_fixed_format() -> None:
    body = b"node: n1\ng: 3\n"
    data = controlfile.encode(body, 7)
    digest = hashlib.sha256(body + b"v=7").hexdigest()
    assert data == body + f"#haios v=7 sha256={digest}\n".encode()


def test_decode_roundtrip_gives_body_and_version() -> None:
    cf = controlfile.decode(controlfile.encode(b"a: 1\n", 12), "x")
    assert (cf.body, cf.version, cf.text) == (b"a: 1\n", 12, "a: 1\n")


def test_decode_empty_body_is_valid() -> None:
    assert controlfile.decode(controlfile.encode(b"", 1), "x").body == b""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no integrity footer"),
        (b"a: 1\n", "integrity footer is missing or malformed"),
        (b"a: 1\n#haios v=1 sha256=" + b"0" * 64 + b"\n", "sha256 does not match"),
        (b"a: 1\n#haios v=01 sha256=" + b"0" * 64 + b"\n", "malformed"),
        (b"a: 1\n#haios v=1 sha256=" + b"A" * 64 + b"\n", "malformed"),
        (b"a: 1\n#haios  v=1 sha256=" + b"0" * 64 + b"\n", "malformed"),
        (b"a: 1\n#haios v=1 sha256=" + b"0" * 64, "no integrity footer"),
    ],
)
def test_decode_bad_footer_is_integrity_error(data: bytes, reason: str) -> None:
    with pytest.raises(IntegrityError, match=reason) as info:
        controlfile.decode(data, "node/state.txt")
    assert str(info.value).startswith("node/state.txt: ")
    assert info.value.exit_code == 5


def test_decode_body_not_utf8_is_refused_even_with_valid_hash() -> None:
    body = b"a: \xff\n"
    digest = hashlib.sha256(body + b"v=1").hexdigest()
    with pytest.raises(IntegrityError, match="not valid UTF-8 at byte 3"):
        controlfile.decode(body + f"#haios v=1 sha256={digest}\n".encode(), "f")


def test_decode_bom_is_refused() -> None:
    body = b"\xef\xbb\xbfa: 1\n"
    digest = hashlib.sha256(body + b"v=1").hexdigest()
    with pytest.raises(IntegrityError, match="byte-order mark"):
        controlfile.decode(body + f"#haios v=1 sha256={digest}\n".encode(), "f")


def test_read_flipped_byte_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.txt"
    controlfile.write_mapping(path, {"node": "n1", "g": 4}, expected_version=None)
    data = bytearray(path.read_bytes())
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(IntegrityError) as info:
            controlfile.read(path)
        assert str(path) in info.value.one_line()


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ControlFileMissing, match="no such control file"):
        controlfile.read(tmp_path / "nope")


def test_read_oversized_file_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big"
    with open(path, "wb") as fh:
        fh.truncate(controlfile.MAX_SIZE + 1)
    with pytest.raises(IntegrityError, match="over the 16777216-byte limit for control files"):
        controlfile.read(path)


def test_write_versions_increase_from_one(tmp_path: Path) -> None:
    path = tmp_path / "fence"
    assert controlfile.write(path, b"a: 1\n", expected_version=None) == 1
    assert controlfile.write(path, b"a: 2\n", expected_version=1) == 2
    assert controlfile.read(path).version == 2
    assert controlfile.current_version(tmp_path / "other") is None


def test_write_with_stale_version_is_conflict_and_keeps_file(tmp_path: Path) -> None:
    path = tmp_path / "fence"
    controlfile.write(path, b"a: 1\n", expected_version=None)
    controlfile.write(path, b"a: 2\n", expected_version=1)
    before = path.read_bytes()
    with pytest.raises(VersionConflict, match="expected v1, found v2"):
        controlfile.write(path, b"a: 3\n", expected_version=1)
    with pytest.raises(VersionConflict, match="expected absent, found v2"):
        controlfile.write(path, b"a: 3\n", expected_version=None)
    assert path.read_bytes() == before


def test_write_over_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.txt"
    path.write_bytes(b"garbage\n")
    with pytest.raises(IntegrityError):
        controlfile.write(path, b"a: 1\n", expected_version=None)
    assert path.read_bytes() == b"garbage\n"


def test_write_body_without_newline_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="end with a newline"):
        controlfile.write(tmp_path / "f", b"a: 1", expected_version=None)


def test_write_io_error_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.txt"
    controlfile.write(path, b"a: 1\n", expected_version=None)
    before = path.read_bytes()

    def full_disk(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as mp:
        mp.setattr(os, "write", full_disk)
        with pytest.raises(StorageError, match="could not write: No space left on device") as info:
            controlfile.write(path, b"a: 2\n", expected_version=1)
    assert "disk is full" in info.value.hint
    assert path.read_bytes() == before
    assert not (tmp_path / temp_name("state.txt")).exists()


def test_write_fsync_error_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.txt"
    calls: list[int] = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", failing_fsync)
        with pytest.raises(StorageError, match="Input/output error"):
            controlfile.write(path, b"a: 1\n", expected_version=None)
    assert len(calls) == 1
    assert not path.exists()


def test_mapping_roundtrip_keeps_order_and_types(tmp_path: Path) -> None:
    path = tmp_path / "state.txt"
    mapping = {"node": "n1", "g": 3, "ph": None, "status": "READY", "nested": {"z": [1, 2], "a": True}}
    version = controlfile.write_mapping(path, mapping, expected_version=None)
    loaded, read_version = controlfile.read_mapping(path)
    assert loaded == mapping and list(loaded) == list(mapping) and read_version == version


@given(
    body=st.text().map(lambda s: s.replace("\ufeff", "")),
    version=st.integers(min_value=0, max_value=controlfile.MAX_VERSION),
)
def test_property_roundtrip(body: str, version: int) -> None:
    raw = body.encode("utf-8")
    if raw and not raw.endswith(b"\n"):
        raw += b"\n"
    cf = controlfile.decode(controlfile.encode(raw, version), "p")
    assert (cf.body, cf.version) == (raw, version)


@given(data=st.binary(max_size=4096))
def test_property_any_bytes_verdict_or_haios_error(data: bytes) -> None:
    try:
        cf = controlfile.decode(data, "fuzz")
    except HaiosError:
        return
    assert controlfile.encode(cf.body, cf.version) == data


@given(data=st.binary(max_size=512))
def test_property_any_bytes_through_read_mapping(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz"
    path.write_bytes(data)
    with contextlib.suppress(HaiosError):
        controlfile.read_mapping(path)


def _run_crash_trial(path: Path, rng: random.Random, writers: Zygote) -> None:
    from helpers.cf_writer import body_for

    pid, lines = writers.start(str(path))
    assert lines[0] == "ready", lines
    time.sleep(rng.uniform(0, 0.03))
    os.kill(pid, signal.SIGKILL)
    acknowledged = [int(line) for line in [*lines[1:], *writers.finish()]]
    cf = controlfile.read(path)  # must verify: never a mix of two versions
    assert cf.body == body_for(cf.version)
    if acknowledged:
        assert acknowledged[-1] <= cf.version <= acknowledged[-1] + 1
    # A later write must never trip on anything the killed writer left behind.
    controlfile.write(path, body_for(cf.version + 1), expected_version=cf.version)
    assert not (path.parent / temp_name(path.name)).exists()


@pytest.mark.slow
def test_crash_sigkill_writer_leaves_old_or_new(tmp_path: Path, rate: Callable[[str], None]) -> None:
    trials = int(os.environ.get("HAIOS_CRASH_TRIALS", "200"))
    started = time.monotonic()
    rng = random.Random(20261126)
    env = {**os.environ, "PYTHONPATH": f"{PROJECT}{os.pathsep}{PROJECT / 'tests'}", "PYTHONDONTWRITEBYTECODE": "1"}
    path = tmp_path / "state.txt"
    from helpers.cf_writer import body_for

    controlfile.write(path, body_for(1), expected_version=None)
    with Zygote("helpers.cf_writer", env) as writers:
        for _ in range(trials):
            _run_crash_trial(path, rng, writers)
    seconds = time.monotonic() - started
    rate(f"{trials} writers killed in {seconds:.1f} s: {trials / seconds:.1f} a second")


def test_read_mapping_cached_parses_again_only_after_a_change(tmp_path: Path) -> None:
    path = tmp_path / "policy"
    controlfile.write_mapping(path, {"a": [1, 2]}, expected_version=None)
    first, version = controlfile.read_mapping_cached(path)
    first["a"].append(3)  # the caller's own copy: the cache keeps what the file says
    again, _ = controlfile.read_mapping_cached(path)
    assert (again, version) == ({"a": [1, 2]}, 1)
    controlfile.write_mapping(path, {"a": [9]}, expected_version=1)
    assert controlfile.read_mapping_cached(path) == ({"a": [9]}, 2)
    path.write_bytes(path.read_bytes().replace(b"9", b"8"))  # damaged: verified on every call
    with pytest.raises(HaiosError):
        controlfile.read_mapping_cached(path)


def test_read_mapping_cached_keeps_a_bounded_amount_least_recently_read_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controlfile, "PARSED_BODY_BYTES", 3000)
    parsed: list[str] = []
    real = controlfile.load_mapping
    monkeypatch.setattr(controlfile, "load_mapping", lambda cf: parsed.append(cf.path.name) or real(cf))
    paths = []
    for i in range(6):  # each body about 1 KB: three fit in the bound
        path = tmp_path / f"file-{i}"
        controlfile.write_mapping(path, {"pad": "x" * 1000, "i": i}, expected_version=None)
        paths.append(path)
    for path in paths:
        assert controlfile.read_mapping_cached(path)[0]["i"] == int(path.name[-1])
    parsed.clear()
    for path in paths[-2:]:  # the most recently read are still parsed
        controlfile.read_mapping_cached(path)
    assert parsed == []
    controlfile.read_mapping_cached(paths[0])  # the first was dropped to stay within the bound
    assert parsed == ["file-0"]
    assert sum(entry[2] for entry in controlfile._PARSED.values()) <= 3000


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
PLAIN_MAPPINGS = st.dictionaries(
    st.text(max_size=12) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    PLAIN,
    max_size=6,
)


@settings(max_examples=600, deadline=None)
@given(mapping=PLAIN_MAPPINGS)
def test_property_a_plain_mapping_reads_back_as_written(mapping: dict[str, object]) -> None:
    # what write_mapping relies on when it keeps the mapping it wrote instead of parsing it again
    if not controlfile._plain(mapping):
        return  # not kept: read back, it is parsed
    body = controlfile.dump_mapping(mapping)
    cf = controlfile.decode(controlfile.encode(body, 1), "state.txt")
    assert controlfile.load_mapping(cf) == mapping


@settings(max_examples=600, deadline=None)
@given(mapping=PLAIN_MAPPINGS)
def test_property_a_json_style_body_reads_back_the_same_both_ways(mapping: dict[str, object]) -> None:
    # a large plain mapping is written in JSON style: the JSON reading and the YAML reading of that
    # body give the mapping back exactly (what lets load_mapping take the quick way)
    if not controlfile._plain(mapping):
        return
    body = controlfile._json_text(mapping)
    quick = controlfile._from_json_body(body)
    assert quick == mapping if len(body) >= controlfile.JSON_BODY_FROM else quick is None  # small: block style
    assert load_yaml(body, "policy").value == mapping


def _members(count: int) -> dict[str, object]:
    return {"cluster": "c", "membership": {f"node-{i}": "active" for i in range(count)}, "max_g": None, "f": 0.25}


def test_a_large_plain_mapping_is_written_in_json_style_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "policy"
    big, small = _members(200), _members(2)
    controlfile.write_mapping(path, big, expected_version=None)
    body = controlfile.read(path).body
    assert body.startswith(b"{\n") and load_yaml(body, "policy").value == big  # YAML all the same
    assert controlfile.read_mapping(path)[0] == big
    controlfile.write_mapping(path, small, expected_version=1)
    assert controlfile.read(path).body.startswith(b"cluster: c\n")  # a small one stays in block style
    assert controlfile.read_mapping(path) == (small, 2)


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        # a key twice: the YAML reading refuses it (the JSON parser would keep the last)
        (b'{\n"a": 1,\n"a": 2\n}\n', "refused"),
        # not haios's own layout: read as YAML, the same mapping
        (b'{"a": [1, 2], "b": "x"}\n', {"a": [1, 2], "b": "x"}),
        (b'{\n"a": "\\u00e9"\n}\n', {"a": "\u00e9"}),
        (b'{\n"a": 9223372036854775808\n}\n', "refused"),  # beyond 64 bits
        (b'{\n"a": NaN\n}\n', {"a": "NaN"}),  # not JSON; in YAML a plain string
    ],
)
def test_a_json_looking_body_that_is_not_haios_own_is_read_as_yaml(body: bytes, outcome: object) -> None:
    cf = controlfile.decode(controlfile.encode(body, 1), "policy")
    if outcome == "refused":
        with pytest.raises(ControlFileError):
            controlfile.load_mapping(cf)
    else:
        assert controlfile.load_mapping(cf) == outcome


def test_a_written_mapping_is_read_back_without_parsing_while_the_file_stays_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    real = controlfile.load_mapping
    monkeypatch.setattr(controlfile, "load_mapping", lambda cf: parsed.append(cf.path.name) or real(cf))
    path = tmp_path / "replication"
    version = controlfile.write_mapping(path, {"group": ["n1", "n2"], "epoch": 1}, expected_version=None)
    assert controlfile.read_mapping_cached(path) == ({"group": ["n1", "n2"], "epoch": 1}, version)
    assert parsed == []
    # changed behind haios's back (same version, other bytes): verified, then parsed
    cf = controlfile.read(path)
    path.write_bytes(controlfile.encode(cf.body.replace(b"n2", b"n3"), cf.version))
    assert controlfile.read_mapping_cached(path)[0]["group"] == ["n1", "n3"] and len(parsed) == 1
    # values that may not read back as they are (a tuple): not kept, parsed when read
    controlfile.write_mapping(path, {"group": ("n1",)}, expected_version=cf.version)
    assert controlfile.read_mapping_cached(path)[0] == {"group": ["n1"]} and len(parsed) == 2


def _yaml_reading(body: bytes) -> object:
    """What the YAML reading makes of ``body``: the value, or "refused"."""
    try:
        return load_yaml(body, "state.txt").value
    except YamlRejected:
        return "refused"


@settings(max_examples=800, deadline=None)
@given(mapping=PLAIN_MAPPINGS)
def test_property_a_block_body_read_line_by_line_is_what_yaml_reads(mapping: dict[str, object]) -> None:
    body = controlfile.dump_mapping(mapping)
    simple = controlfile._from_block_body(body)
    assert simple is None or simple == _yaml_reading(body)


_VALUES = [
    "1",
    "-1",
    "0x1f",
    "0o17",
    "1e5",
    "1e999",
    "1.5",
    "9223372036854775808",
    "null",
    "~",
    "True",
    "yes",
    "IDLE",
    "0.1.0",
    "a b",
    "a: b",
    "a #c",
    "#c",
    "{}",
    "[]",
    "{a: 1}",
    "[1]",
    "'x'",
    "''",
    "' x'",
    "'a''b'",
    "'a",
    '"x"',
    "&a x",
    "*a",
    "!!str 1",
    ".inf",
    "-.inf",
    ".nan",
    "- 1",
    "|",
    ">",
    "'#'",
    "'a: b'",
    "'1'",
    "'null'",
    "'\\'",
    "'a\tb'",
    "a\tb",
    "'caf\u00e9'",
]
_INDENTS = ["", "", "", "  ", "  ", "    ", " ", "\t"]
_KEYS = ["a", "b", "c", "node-1", "x.y", "0", "true", "-a", "a b", "'a'", "a#"]
_ENDS = [":", ":", ":", ":  1", " : 1", "", *(": " + v for v in _VALUES)]


def test_every_one_line_body_the_line_reading_takes_reads_the_same_as_yaml() -> None:
    for key in _KEYS:
        for end in _ENDS:
            body = f"{key}{end}\n".encode()
            simple = controlfile._from_block_body(body)
            assert simple is None or simple == _yaml_reading(body), body


_LINE = st.tuples(
    st.sampled_from(_INDENTS),
    st.sampled_from(_KEYS),
    st.sampled_from(_ENDS),
).map(lambda t: "".join(t))  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(lines=st.lists(_LINE, min_size=1, max_size=6))
def test_property_any_body_the_line_reading_takes_reads_the_same_as_yaml(lines: list[str]) -> None:
    # bodies near the simple shape, most of them not it: whatever the line reading accepts, the YAML
    # reading reads the same (the rest it leaves to YAML)
    body = ("\n".join(lines) + "\n").encode()
    simple = controlfile._from_block_body(body)
    assert simple is None or simple == _yaml_reading(body)


def test_haios_own_small_control_files_are_read_line_by_line() -> None:
    bodies = [
        {"node": "node-1", "g": 100, "ph": "IDLE", "status": "READY", "vc": {"node-1": 2000}},
        {"node": "node-1", "seq": 1, "wall_time": "2026-12-01T13:49:02.918Z", "haios_version": "0.1.0"},
        {"g": 1, "phase": "IDLE", "status": "DONE", "started_at": "2026-12-01T14:05:39.211Z", "error": None},
        {"shards": {}, "members": [], "cursor": {"seq": 0, "offset": 366050, "lamport": 2000, "crc": 490030886}},
    ]
    for mapping in bodies:
        body = controlfile.dump_mapping(mapping)
        assert controlfile._from_block_body(body) == mapping == load_yaml(body, "state.txt").value
