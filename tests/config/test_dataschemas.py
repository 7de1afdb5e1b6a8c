"""User schemas for data/ files: registered in the repo's schemas/, enforced when a phase writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haios import load_repo, validate_repo
from haios.errors import DataSchemaError
from haios.node import Node, init_node_root, scan_phases
from haios.wal import RecordType, read_records

APP_SCHEMA = {
    "x-haios-paths": ["app/*.json"],
    "type": "object",
    "required": ["port"],
    "properties": {"port": {"type": "integer", "minimum": 1, "maximum": 65535}},
}


def test_dataschemas_registered_and_compiled_into_the_policy(repo: Path) -> None:
    (repo / "schemas").mkdir()
    (repo / "schemas/app.schema.json").write_text(json.dumps(APP_SCHEMA))
    report = validate_repo(repo)
    assert report.ok and "schemas/app.schema.json" in report.files
    policy = load_repo(repo).compile_policy()
    assert policy["data_schemas"] == [
        {"name": "app", "paths": ["app/*.json"], "schema": APP_SCHEMA, "requires_causal": False}
    ]


def test_dataschemas_problems_are_reported(repo: Path) -> None:
    (repo / "schemas").mkdir()
    (repo / "schemas/broken.schema.json").write_text('{"x-haios-paths": ["a"],\n  "type": }')
    (repo / "schemas/nopaths.schema.json").write_text('{"type": "object"}')
    (repo / "schemas/escape.schema.json").write_text('{"x-haios-paths": ["../x"]}')
    (repo / "schemas/invalid.schema.json").write_text('{"x-haios-paths": ["a"], "type": 5}')
    problems = [str(p) for p in validate_repo(repo).problems]
    assert problems == [
        "schemas/broken.schema.json:2:11: (root): not valid JSON: Expecting value",
        "schemas/escape.schema.json:1:1: x-haios-paths: globs must stay inside data/ (found '../x')",
        "schemas/invalid.schema.json:1:1: (root): not a valid JSON Schema: 5 is not valid under any of the given schemas",
        "schemas/nopaths.schema.json:1:1: x-haios-paths: needs a list of globs relative to data/",
    ]


@pytest.fixture
def node_root(tmp_path: Path) -> Path:
    root = tmp_path / "n1"
    init_node_root(
        root,
        "n1",
        {
            "cluster": "c",
            "max_g": None,
            "data_schemas": [
                {"name": "app", "paths": ["app/*.json"], "schema": APP_SCHEMA}
            ],  # as older haios pushed it
        },
    )
    return root


def test_dataschemas_bad_file_is_refused_before_prepare(node_root: Path) -> None:
    tx = Node(node_root).begin(1, "ANALYZE", participants=["n1"])
    tx.intent("app/web.json", b'{"port": 70000}')
    tx.intent("other.txt", b"not covered by any schema")
    with pytest.raises(
        DataSchemaError,
        match=r"data/app/web.json: does not match schema app: port: 70000 is greater than the maximum of 65535",
    ):
        tx.prepare()
    assert RecordType.PREPARE not in [r.type for r in read_records(node_root / "wal")]
    assert not (node_root / "data/app").exists()
    tx.abort("schema")
    assert scan_phases(node_root)[(1, "ANALYZE")].ended == "ABORT_PHASE"


def test_dataschemas_good_file_and_yaml_content(node_root: Path) -> None:
    with Node(node_root).begin(1, "ANALYZE", participants=["n1"]) as tx:
        tx.intent("app/web.json", b"port: 8080\n")  # YAML is accepted too
        tx.prepare()
        tx.commit()
    assert (node_root / "data/app/web.json").read_bytes() == b"port: 8080\n"


def test_dataschemas_unparsable_content_is_refused(node_root: Path) -> None:
    with Node(node_root).begin(1, "ANALYZE", participants=["n1"]) as tx:
        tx.intent("app/web.json", b"port: !!python/object:os.system 1\n")
        with pytest.raises(DataSchemaError, match="YAML tags are not allowed"):
            tx.prepare()
