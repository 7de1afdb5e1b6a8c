"""User schemas for ``data/`` files (the desired-state repo's ``schemas/`` folder).

Each ``schemas/NAME.schema.json`` is a JSON Schema (draft 2020-12) with one extra top-level key,
``x-haios-paths``: globs relative to a node's ``data/`` (``fnmatch`` syntax; ``*`` also matches
``/``). A phase that writes a matching file is validated against it (SPEC §2.4): the content is read
as YAML (JSON is YAML) with the same strict rules as the desired-state files. A schema that sets
``requires_causal: true`` gives its files a file-level vector clock (SPEC §7): a replay never puts a
causally older version over a newer one.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataSchemaError, InputError, Problem, YamlRejected
from ..untrusted import read_json
from .yamlload import load_yaml

FOLDER = "schemas"
SUFFIX = ".schema.json"


@dataclass(frozen=True)
class DataSchema:
    name: str
    paths: tuple[str, ...]
    schema: dict[str, Any]
    requires_causal: bool = False  # its files keep a file-level vector clock (SPEC §7)

    def matches(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.paths)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paths": list(self.paths),
            "schema": self.schema,
            "requires_causal": self.requires_causal,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> DataSchema:
        causal = value.get("requires_causal", False) is True
        return cls(str(value["name"]), tuple(value["paths"]), dict(value["schema"]), causal)


def causal_paths(schemas: list[DataSchema]) -> Callable[[str], bool]:
    """Whether a data/ path is covered by a schema that sets ``requires_causal``."""
    causal = [s for s in schemas if s.requires_causal]
    return lambda path: any(s.matches(path) for s in causal)


def load_data_schemas(repo: Path) -> tuple[list[DataSchema], list[Problem]]:
    """Every schema in ``repo/schemas/``, and the problems of those that are not usable."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    folder = repo / FOLDER
    schemas: list[DataSchema] = []
    problems: list[Problem] = []
    if not folder.is_dir():
        return schemas, problems
    for name in sorted(os.listdir(folder)):
        if not name.endswith(SUFFIX):
            continue
        rel = f"{FOLDER}/{name}"
        try:
            value = read_json(folder / name, "desired", within=repo)
        except InputError as exc:
            reason = exc.reason.split(" (line ")[0] if exc.line > 1 or exc.column > 1 else exc.reason
            problems.append(Problem(rel, exc.line, exc.column, "(root)", reason))
            continue
        if not isinstance(value, dict):
            problems.append(Problem(rel, 1, 1, "(root)", "a schema is a JSON object"))
            continue
        paths = value.get("x-haios-paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            problems.append(Problem(rel, 1, 1, "x-haios-paths", "needs a list of globs relative to data/"))
            continue
        bad = [p for p in paths if p.startswith("/") or ".." in p.split("/")]
        if bad:
            problems.append(Problem(rel, 1, 1, "x-haios-paths", f"globs must stay inside data/ (found {bad[0]!r})"))
            continue
        causal = value.get("requires_causal", False)
        if not isinstance(causal, bool):
            problems.append(Problem(rel, 1, 1, "requires_causal", "is true or false"))
            continue
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            problems.append(Problem(rel, 1, 1, "(root)", f"not a valid JSON Schema: {' '.join(exc.message.split())}"))
            continue
        schemas.append(DataSchema(name[: -len(SUFFIX)], tuple(paths), value, causal))
    return schemas, problems


def validate_data(path: str, content: bytes, schemas: list[DataSchema]) -> None:
    """Raise DataSchemaError if ``content`` written to ``data/<path>`` breaks a schema that covers it."""
    from jsonschema import Draft202012Validator

    covering = [s for s in schemas if s.matches(path)]
    if not covering:
        return
    try:
        doc = load_yaml(content, path)
    except YamlRejected as exc:
        raise DataSchemaError(f"data/{path}: {exc.problem}") from exc
    for schema in covering:
        errors = sorted(Draft202012Validator(schema.schema).iter_errors(doc.value), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.absolute_path) or "(root)"
            raise DataSchemaError(
                f"data/{path}: does not match schema {schema.name}: {where}: {' '.join(first.message.split())}"
            )
