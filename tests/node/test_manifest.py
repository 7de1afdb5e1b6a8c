"""data/ files are the bytes a phase wrote; the manifest beside them keeps versions and hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from haios import controlfile
from haios.errors import DataDriftError, IntegrityError
from haios.node import Node, init_node_root, manifest
from haios.node.manifest import MANIFEST


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "n1"
    init_node_root(path, "n1", {"cluster": "c", "max_g": None})
    return path


def _phase(node: Node, g: int, phase: str, files: dict[str, bytes | None], *, commit: bool = True) -> None:
    tx = node.begin(g, phase, participants=[node.name])
    for path, content in files.items():
        tx.intent(path, content)
    tx.prepare()
    if commit:
        tx.commit()
    else:
        tx.abort("test")


BINARY = bytes(range(256)) * 3
JSON = json.dumps({"a": 1}).encode()  # no trailing newline


def test_data_files_hold_exactly_the_bytes_written(root: Path) -> None:
    _phase(Node(root), 1, "ANALYZE", {"out/blob.bin": BINARY, "out/doc.json": JSON, "empty": b""})
    assert (root / "data/out/blob.bin").read_bytes() == BINARY
    assert (root / "data/out/doc.json").read_bytes() == JSON
    assert (root / "data/empty").read_bytes() == b""
    m = manifest.load(root)
    assert m.files["out/blob.bin"] == manifest.Entry(1, hashlib.sha256(BINARY).hexdigest(), len(BINARY))
    assert manifest.check(root) == []


def test_versions_advance_and_a_delete_forgets_the_file(root: Path) -> None:
    node = Node(root)
    _phase(node, 1, "ANALYZE", {"f": b"1"})
    _phase(node, 1, "BLUEPRINT", {"f": b"2"})
    assert manifest.load(root).version_of("f") == 2
    _phase(node, 1, "CONSTRUCT", {"f": None})
    assert manifest.load(root).version_of("f") is None and not (root / "data/f").exists()
    _phase(node, 1, "VALIDATE", {"f": b"3"})
    assert manifest.load(root).version_of("f") == 1


def test_abort_puts_the_manifest_back_with_the_data(root: Path) -> None:
    node = Node(root)
    _phase(node, 1, "ANALYZE", {"keep": b"old", "gone": b"x"})
    before = controlfile.read(root / MANIFEST)
    _phase(node, 1, "BLUEPRINT", {"keep": b"new", "gone": None, "added": b"y"}, commit=False)
    assert (root / "data/keep").read_bytes() == b"old" and (root / "data/gone").exists()
    assert not (root / "data/added").exists()
    assert controlfile.read(root / MANIFEST).body == before.body and manifest.check(root) == []
    _phase(node, 1, "BLUEPRINT", {"keep": b"newer"})  # the redo starts from the restored versions
    assert manifest.load(root).version_of("keep") == 2
    assert not list((root / "snapshots").iterdir())  # snapshot and its manifest link both dropped


def test_snapshot_without_a_manifest_restores_to_none(root: Path) -> None:
    node = Node(root)
    _phase(node, 1, "ANALYZE", {"f": b"1"}, commit=False)
    assert not (root / MANIFEST).exists() and not (root / "data/f").exists()


def test_replay_finishes_a_crash_between_the_files_and_the_manifest(root: Path) -> None:
    node = Node(root)
    _phase(node, 1, "ANALYZE", {"a": b"a1", "b": b"b1"})
    intents = [
        {"path": "a", "op": "write", "expected_version": 1, "sha256": hashlib.sha256(b"a2").hexdigest()},
        {"path": "b", "op": "write", "expected_version": 1, "sha256": hashlib.sha256(b"b2").hexdigest()},
    ]
    (root / "data/a").write_bytes(b"a2")  # the first file was written, then the writer died
    content = {"a": b"a2", "b": b"b2"}
    assert manifest.apply(root, intents, lambda i: content[i["path"]]) == 2
    assert manifest.apply(root, intents, lambda i: content[i["path"]]) == 0  # idempotent
    assert (root / "data/b").read_bytes() == b"b2" and manifest.check(root) == []


def test_check_names_every_file_that_disagrees(root: Path) -> None:
    _phase(Node(root), 1, "ANALYZE", {"changed": b"1", "missing": b"2", "fine": b"3"})
    (root / "data/changed").write_bytes(b"edited by hand")
    (root / "data/missing").unlink()
    (root / "data/stray").write_bytes(b"?")
    assert manifest.check(root) == [
        "data/changed: its bytes differ from version 1 that haios wrote",
        "data/stray: not written by any phase (not in the manifest)",
        "data/missing: in the manifest (version 1) but missing",
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"files": []}',
        b'{"files": {"f": [0, "x", 1]}}',
        b'{"files": {"f": [1, "' + b"a" * 64 + b'"]}}',
    ],
)
def test_a_hostile_manifest_is_one_finding_never_a_crash(root: Path, body: bytes) -> None:
    controlfile.write(root / MANIFEST, body + b"\n", expected_version=None)
    with pytest.raises(IntegrityError, match="manifest"):
        manifest.load(root)
    assert len(manifest.check(root)) == 1
    with pytest.raises(IntegrityError):
        _phase(Node(root), 1, "ANALYZE", {"f": b"1"})


def test_a_file_put_in_data_by_hand_is_adopted_by_the_phase_that_read_it(root: Path) -> None:
    (root / "data/hosts").write_bytes(b"127.0.0.1 localhost")  # there before haios managed anything
    _phase(Node(root), 1, "ANALYZE", {"hosts": b"127.0.0.1 localhost\n10.0.0.2 db"})
    assert (root / "data/hosts").read_bytes() == b"127.0.0.1 localhost\n10.0.0.2 db"
    assert manifest.load(root).version_of("hosts") == 1 and manifest.check(root) == []


def test_a_file_changed_between_the_intent_and_prepare_is_never_overwritten(root: Path) -> None:
    node = Node(root)
    _phase(node, 1, "ANALYZE", {"f": b"1"})
    tx = node.begin(1, "BLUEPRINT", participants=["n1"])
    tx.intent("f", b"2")
    (root / "data/f").write_bytes(b"edited meanwhile")
    with pytest.raises(DataDriftError, match="differs from the one the phase read"):
        tx.prepare()
    tx.close()
    assert (root / "data/f").read_bytes() == b"edited meanwhile"


def test_a_phase_removes_a_file_that_was_put_in_data_by_hand(root: Path) -> None:
    (root / "data/stray.conf").write_bytes(b"left by someone")
    _phase(Node(root), 1, "ANALYZE", {"stray.conf": None})
    assert not (root / "data/stray.conf").exists() and manifest.check(root) == []
