"""Validation of the whole desired-state repo: every file, every key, and the links between files.

``validate_repo`` reports **all** problems in one run (never stopping at the first), each with the
file, line, column and key path; ``load_repo`` returns the frozen model of a valid repo or raises
:class:`~haios.errors.ConfigError` carrying the same problems.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Problem, YamlRejected
from ..layout import TOMBSTONES_FILE
from ..resources import schema
from ..sshkeys import parse_public_key
from ..untrusted import MAX_DEPTH, bounded_int, nests_deeper
from . import model
from .dataschemas import FOLDER as DATA_SCHEMA_FOLDER
from .dataschemas import SUFFIX as DATA_SCHEMA_SUFFIX
from .dataschemas import load_data_schemas
from .problems import KeyPath
from .yamlload import YamlDoc, load_status, load_yaml_file

# SPEC §1: the files of the repo, their kinds and the schema each is checked against.
FIXED_FILES: dict[str, tuple[str, str]] = {
    "haios.yaml": ("Cluster", "cluster"),
    "desired/state.yaml": ("DesiredState", "desired-state"),
    "policies/thresholds.yaml": ("Thresholds", "thresholds"),
    "policies/budget.yaml": ("Budget", "budget"),
    "policies/fx.yaml": ("FxRates", "fx"),
    "policies/rbac.yaml": ("Rbac", "rbac"),
}
ESSENTIAL_FILES = ("haios.yaml", "desired/state.yaml", "policies/thresholds.yaml")
"""The files every decision of a run depends on: one that is not valid stops ``plan`` and
``reconcile`` (exit 1). Any other file that is not valid blocks only the decisions that need it
(:attr:`RepoConfig.unreadable`)."""
FILE_DIRS: dict[str, tuple[str, str]] = {
    "playbooks": ("Playbook", "playbook"),
    "overrides": ("Override", "override"),
}
SSH_ONLY_KEYS = ("address", "port", "user", "host_key")


@dataclass
class ValidationReport:
    """The outcome of validating a repo: every problem found and every file looked at."""

    repo: Path
    problems: list[Problem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# -- loading and schema checks -------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


_TYPE_WORDS = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


# What the schemas' shared patterns mean, for messages (the property's own description says what it is for).
_PATTERN_MEANING = {
    r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d)$": "not a duration (use a number of seconds or a string such as "
    "'250ms', '15s', '10m', '2h', '90d')",
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$": "not a name (1-63 lowercase letters, digits and '-', "
    "not starting or ending with '-')",
    r"^[A-Z]{3}$": "not a currency code (three capital letters, such as EUR)",
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$": "not a date (YYYY-MM-DD)",
}


def _schema_problems(doc: YamlDoc, schema_name: str) -> Iterator[Problem]:
    from jsonschema import Draft202012Validator, FormatChecker

    validator = Draft202012Validator(schema(schema_name), format_checker=FormatChecker())
    for err in validator.iter_errors(doc.value):
        yield from _translate(doc, err)


def _translate(doc: YamlDoc, err: Any) -> Iterator[Problem]:
    path: KeyPath = tuple(err.absolute_path)
    kind = err.validator
    inst = err.instance
    if "propertyNames" in err.relative_schema_path:
        # The offending key itself is the instance; point at the key.
        reason = err.schema.get("description") or err.message
        yield doc.problem((*path, inst), f"invalid key '{inst}': {reason}", prefer_key=True)
    elif kind == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted(err.schema.get("properties", {}))
        for key in sorted(set(inst) - set(allowed)):
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"
            yield doc.problem((*path, key), f"unknown key '{key}'{hint}", prefer_key=True)
    elif kind == "required" and isinstance(inst, dict):
        for key in err.validator_value:
            if key not in inst:
                yield doc.problem(path, f"missing required key '{key}'")
    elif kind == "const":
        yield doc.problem(path, f"must be {err.validator_value!r} (found {inst!r})")
    elif kind == "enum":
        options = ", ".join("null" if o is None else str(o) for o in err.validator_value)
        yield doc.problem(path, f"must be one of {options} (found {inst!r})")
    elif kind == "type":
        wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        words = " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in wanted)
        yield doc.problem(path, f"must be {words} (found {_json_type(inst)}: {inst!r})")
    elif kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {
            "minimum": "at least",
            "exclusiveMinimum": "greater than",
            "maximum": "at most",
            "exclusiveMaximum": "less than",
        }[kind]
        yield doc.problem(path, f"must be {words} {err.validator_value} (found {inst!r})")
    elif kind == "pattern":
        what = (
            _PATTERN_MEANING.get(err.validator_value)
            or err.schema.get("description")
            or f"must match {err.validator_value}"
        )
        yield doc.problem(path, f"invalid value {inst!r}: {what}")
    elif kind == "format":
        yield doc.problem(path, f"{inst!r} is not a valid {err.validator_value}")
    elif kind in ("minItems", "minProperties") and not inst:
        yield doc.problem(path, "must not be empty")
    elif kind in ("minItems", "maxItems", "minProperties", "maxProperties"):
        what = "items" if kind.endswith("Items") else "keys"
        words = "at least" if kind.startswith("min") else "at most"
        yield doc.problem(path, f"must have {words} {err.validator_value} {what} (found {len(inst)})")
    elif kind == "oneOf" and all(set(s) == {"required"} for s in err.validator_value):
        names = " or ".join(f"'{s['required'][0]}'" for s in err.validator_value)
        yield doc.problem(path, f"needs exactly one of {names}")
    else:
        yield doc.problem(path, " ".join(err.message.split()))


def _load_file(repo: Path, rel: str, kind: str, schema_name: str, report: ValidationReport) -> YamlDoc | None:
    """Load and schema-check one file; return it when it is fully valid, else record problems."""
    report.files.append(rel)
    try:
        doc = load_yaml_file(repo / rel, rel, within=repo)
    except YamlRejected as exc:
        report.problems.append(exc.problem)
        return None
    if doc is None:
        report.problems.append(Problem(rel, 1, 1, "(root)", "file is missing"))
        return None
    if not isinstance(doc.value, dict):
        report.problems.append(doc.problem((), f"must be a mapping with apiVersion: haios/v1 and kind: {kind}"))
        return None
    if doc.value.get("kind") not in (None, kind) and doc.value.get("apiVersion") == "haios/v1":
        report.problems.append(doc.problem(("kind",), f"this file must hold kind {kind} (found {doc.value['kind']!r})"))
        return None
    problems = sorted(set(_schema_problems(doc, schema_name)))
    report.problems.extend(problems)
    return None if problems else doc


# -- cross-file checks ---------------------------------------------------------------------------


def _check_cluster(repo: Path, doc: YamlDoc) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    local_roots: dict[str, int] = {}
    ssh_targets: dict[tuple[str, int, str], int] = {}
    for i, node in enumerate(doc.value["nodes"]):
        name = node["name"]
        if name in seen:
            yield doc.problem(("nodes", i, "name"), f"duplicate node name '{name}' (also nodes[{seen[name]}])")
        seen.setdefault(name, i)
        if node["transport"] == "local":
            for key in SSH_ONLY_KEYS:
                if key in node:
                    yield doc.problem(("nodes", i, key), f"'{key}' applies only to transport: ssh", prefer_key=True)
            root = os.path.normpath(repo / node["root"])
            if root in local_roots:
                yield doc.problem(("nodes", i, "root"), f"node root is also used by nodes[{local_roots[root]}]")
            local_roots.setdefault(root, i)
        else:
            if not node["root"].startswith("/"):
                yield doc.problem(("nodes", i, "root"), "an ssh node's root must be an absolute path")
            elif not model.ssh_root_ok(node["root"]):
                # it becomes part of remote commands: nothing a shell could read as more than a word
                yield doc.problem(
                    ("nodes", i, "root"),
                    "an ssh node's root may hold only letters, digits and . _ + - / (no '..', no '//')",
                )
            target = (node["address"], node.get("port", 22), os.path.normpath(node["root"]))
            if target in ssh_targets:
                yield doc.problem(("nodes", i, "root"), f"same host, port and root as nodes[{ssh_targets[target]}]")
            ssh_targets.setdefault(target, i)
    coordination = doc.value.get("coordination", {})
    if coordination.get("backend") == "etcd" and "etcd" not in coordination:
        yield doc.problem(("coordination", "backend"), "backend etcd needs coordination.etcd.endpoints")


def _check_desired(
    desired: YamlDoc, cluster: YamlDoc | None, playbooks: dict[str, YamlDoc], present: set[str]
) -> Iterator[Problem]:
    """``playbooks``: the valid ones; ``present``: the names of every playbook file (a file that is
    not valid is its own problem, not one of the desired state that names it)."""
    membership: dict[str, Any] = desired.value["membership"]
    if cluster is not None:
        names = [n["name"] for n in cluster.value["nodes"]]
        for name in membership:
            if name not in names:
                yield desired.problem(
                    ("membership", name), f"node '{name}' is not defined in haios.yaml", prefer_key=True
                )
        for i, name in enumerate(names):
            if name not in membership:
                yield cluster.problem(
                    ("nodes", i, "name"), f"node '{name}' has no membership entry in desired/state.yaml"
                )
    for name, member in membership.items():
        if member["status"] == "decommissioned" and "since" not in member:
            yield desired.problem(("membership", name), "a decommissioned node needs 'since' (its date)")
    if not any(m["status"] == "active" for m in membership.values()):
        yield desired.problem(("membership",), "no node is active; at least one must be")
    for phase, policy in desired.value.get("phases", {}).items():
        book = policy.get("resume_playbook")
        if policy.get("resumable") and "command" not in policy:
            yield desired.problem(
                ("phases", phase, "resumable"), "resumable says what the phase's command does: set command"
            )
        if book is None:
            continue
        if policy.get("on_partial") != "resume":
            yield desired.problem(
                ("phases", phase, "resume_playbook"), "resume_playbook is only used with on_partial: resume"
            )
        if book not in present:
            yield desired.problem(("phases", phase, "resume_playbook"), f"no playbook named '{book}' in playbooks/")
        elif book in playbooks and playbooks[book].value.get("resumes") != phase:
            yield desired.problem(
                ("phases", phase, "resume_playbook"),
                f"playbook '{book}' does not resume {phase} (it has no 'resumes: {phase}')",
            )


def _check_playbooks(playbooks: dict[str, YamlDoc]) -> Iterator[Problem]:
    kinds: dict[str, str] = {}
    for stem, doc in sorted(playbooks.items()):
        if doc.value["name"] != stem:
            yield doc.problem(("name",), f"name '{doc.value['name']}' must equal the file name '{stem}'")
        kind = doc.value.get("compensates")
        if kind is not None:
            if kind in kinds:
                yield doc.problem(
                    ("compensates",), f"side-effect kind '{kind}' is already compensated by playbook '{kinds[kind]}'"
                )
            kinds.setdefault(kind, stem)


def _check_rbac(doc: YamlDoc) -> Iterator[Problem]:
    names: dict[str, int] = {}
    owners: dict[bytes, str] = {}
    for i, sup in enumerate(doc.value["supervisors"]):
        name = sup["name"]
        if name in names:
            yield doc.problem(
                ("supervisors", i, "name"), f"duplicate supervisor '{name}' (also supervisors[{names[name]}])"
            )
        names.setdefault(name, i)
        for j, line in enumerate(sup["keys"]):
            try:
                key = parse_public_key(line)
            except ValueError as exc:
                yield doc.problem(("supervisors", i, "keys", j), f"not a usable SSH public key: {exc}")
                continue
            if owners.setdefault(key.blob, name) != name:
                yield doc.problem(
                    ("supervisors", i, "keys", j),
                    f"key {key.fingerprint} is also listed for '{owners[key.blob]}'; one key belongs to one person",
                )
        try:
            after = model.parse_time(sup["valid_after"]) if "valid_after" in sup else None
            before = model.parse_time(sup["valid_before"]) if "valid_before" in sup else None
        except ValueError as exc:
            yield doc.problem(("supervisors", i), f"invalid validity time: {exc}")
            continue
        if after and before and after >= before:
            yield doc.problem(("supervisors", i, "valid_before"), "valid_before must be later than valid_after")


def _check_budget(budget: YamlDoc, fx: YamlDoc | None, playbooks: dict[str, YamlDoc]) -> Iterator[Problem]:
    """Every currency a limit or a playbook's cost is given in has a rate: never a silent 1:1."""
    if fx is None:
        return
    known = {fx.value["base"], *fx.value["rates"]}
    limits: list[tuple[YamlDoc, KeyPath, str]] = [
        (budget, ("default", "currency"), budget.value["default"]["currency"])
    ]
    limits += [(budget, ("regions", r, "currency"), x["currency"]) for r, x in budget.value.get("regions", {}).items()]
    limits += [
        (doc, ("cost", "currency"), doc.value["cost"]["currency"]) for doc in playbooks.values() if "cost" in doc.value
    ]
    for doc, path, currency in limits:
        if currency not in known:
            yield doc.problem(path, f"unknown currency {currency}: policies/fx.yaml has no rate for it")


def _check_thresholds(doc: YamlDoc) -> Iterator[Problem]:
    t = model.build_thresholds(doc.value)
    if t.heartbeat_interval >= t.partition_window:
        yield doc.problem(("partition", "window"), "the partition window must be longer than the heartbeat interval")
    if t.eviction_ttl <= t.partition_window:
        yield doc.problem(("partition", "eviction_ttl"), "eviction_ttl must be longer than the partition window")
    if t.sel_backoff_base > t.sel_backoff_cap:
        yield doc.problem(("sel", "backoff_base"), "backoff_base must not exceed backoff_cap")
    if t.heartbeat_interval <= 0:
        yield doc.problem(("heartbeat", "interval"), "the heartbeat interval must be positive")


def strict_json(text: str) -> Any:
    """JSON as a signed payload must be: no duplicate keys, no floats, no NaN or Infinity."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ValueError(f"duplicate key {duplicated[0]!r}")
        return dict(items)

    def no_float(literal: str) -> Any:
        raise ValueError(f"floats are not allowed ({literal[:24]})")

    if nests_deeper(text, MAX_DEPTH):
        raise ValueError(f"nests deeper than {MAX_DEPTH} levels")
    return json.loads(
        text, object_pairs_hook=pairs, parse_int=bounded_int, parse_float=no_float, parse_constant=no_float
    )


def payload_problems(payload: dict[str, Any]) -> list[str]:
    """What the override payload schema says of ``payload`` (empty: it is valid)."""
    from jsonschema import Draft202012Validator

    return [
        f"payload field {'.'.join(str(p) for p in err.absolute_path) or 'payload'}: {' '.join(err.message.split())}"
        for err in Draft202012Validator(schema("override-payload")).iter_errors(payload)
    ]


def _check_override(stem: str, doc: YamlDoc, cluster: YamlDoc | None) -> Iterator[Problem]:
    text = doc.value["payload"]
    try:
        payload = strict_json(text)
    except ValueError as exc:
        yield doc.problem(("payload",), f"payload is not strict JSON: {exc}")
        return
    if not isinstance(payload, dict):
        yield doc.problem(("payload",), "payload must be a JSON object")
        return
    for problem in payload_problems(payload):
        yield doc.problem(("payload",), problem)
    if json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False) != text:
        yield doc.problem(("payload",), "payload is not canonical JSON (keys sorted, no whitespace)")
    if payload.get("trace_id") not in (None, stem):
        yield doc.problem(
            ("payload",), f"payload trace_id '{payload['trace_id']}' does not match the file name '{stem}'"
        )
    if cluster is not None and payload.get("cluster") not in (None, cluster.value["name"]):
        yield doc.problem(("payload",), f"payload is for cluster '{payload['cluster']}', not '{cluster.value['name']}'")


# -- entry points --------------------------------------------------------------------------------


def _list_dir(repo: Path, folder: str, report: ValidationReport) -> Iterable[str]:
    directory = repo / folder
    if not directory.is_dir():
        return []
    names = []
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".yml"):
            report.problems.append(
                Problem(f"{folder}/{entry}", 1, 1, "(root)", "rename it to .yaml; .yml files are ignored")
            )
        elif entry.endswith(".yaml"):
            names.append(entry)
    return names


def require_repo(repo: Path) -> None:
    """ConfigError unless ``repo`` holds a desired-state repo (its ``haios.yaml``): the one error
    every command gives for a directory that is not one."""
    if not (repo / "haios.yaml").is_file():
        raise ConfigError(
            f"{repo}: not a haios desired-state repo (no haios.yaml)",
            hint="pass --repo DIR, or create one with 'haios init DIR'",
        )


def _validate(
    repo: Path, *, with_overrides: bool = True
) -> tuple[ValidationReport, dict[str, YamlDoc], dict[str, YamlDoc], dict[str, YamlDoc]]:
    report = ValidationReport(repo)
    require_repo(repo)
    docs: dict[str, YamlDoc] = {}
    for rel, (kind, schema_name) in FIXED_FILES.items():
        if not os.path.lexists(repo / rel):
            report.files.append(rel)
            report.problems.append(
                Problem(
                    rel, 1, 1, "(root)", "file is missing (restore it from git or copy the default from 'haios init')"
                )
            )
            continue
        doc = _load_file(repo, rel, kind, schema_name, report)
        if doc is not None:
            docs[rel] = doc
    for rel in _list_dir(repo, "policies", report):
        if f"policies/{rel}" not in FIXED_FILES:
            report.problems.append(
                Problem(
                    f"policies/{rel}", 1, 1, "(root)", "unknown policy file (expected thresholds, budget, fx or rbac)"
                )
            )
    per_dir: dict[str, dict[str, YamlDoc]] = {}
    present: dict[str, set[str]] = {}
    for folder, (kind, schema_name) in FILE_DIRS.items():
        if folder == "overrides" and not with_overrides:
            per_dir[folder] = {}  # judged one by one ('haios override verify'), not as the repo's validity
            continue
        per_dir[folder] = {}
        names = list(_list_dir(repo, folder, report))
        present[folder] = {name[: -len(".yaml")] for name in names}
        for name in names:
            doc = _load_file(repo, f"{folder}/{name}", kind, schema_name, report)
            if doc is not None:
                per_dir[folder][name[: -len(".yaml")]] = doc
    playbooks, overrides = per_dir["playbooks"], per_dir["overrides"]

    cluster = docs.get("haios.yaml")
    checks: list[Iterable[Problem]] = []
    if cluster is not None:
        checks.append(_check_cluster(repo, cluster))
    if "desired/state.yaml" in docs:
        checks.append(_check_desired(docs["desired/state.yaml"], cluster, playbooks, present["playbooks"]))
    checks.append(_check_playbooks(playbooks))
    if "policies/rbac.yaml" in docs:
        checks.append(_check_rbac(docs["policies/rbac.yaml"]))
    if "policies/budget.yaml" in docs:
        checks.append(_check_budget(docs["policies/budget.yaml"], docs.get("policies/fx.yaml"), playbooks))
    if "policies/thresholds.yaml" in docs:
        checks.append(_check_thresholds(docs["policies/thresholds.yaml"]))
    for stem, doc in sorted(overrides.items()):
        checks.append(_check_override(stem, doc, cluster))
    for check in checks:
        report.problems.extend(check)
    data_schemas, schema_problems = load_data_schemas(repo)
    report.problems.extend(schema_problems)
    report.files.extend(f"{DATA_SCHEMA_FOLDER}/{s.name}{DATA_SCHEMA_SUFFIX}" for s in data_schemas)
    report.problems.sort(key=lambda p: (p.file, p.line, p.column, p.key, p.message))
    return report, docs, playbooks, overrides


def validate_repo(repo: Path | str) -> ValidationReport:
    """Check every file of the desired-state repo at ``repo``; return every problem found."""
    return _validate(Path(repo))[0]


def load_repo(repo: Path | str, *, overrides: bool = False, degraded: bool = False) -> model.RepoConfig:
    """Load a valid desired-state repo; raise :class:`ConfigError` listing its problems if invalid.

    Files in ``overrides/`` arrive by pull request and are judged one by one where they are used
    (one bad file is one rejected override, never the end of a run); ``overrides=True`` loads and
    requires them too (``haios init`` checking its own scaffold).

    ``degraded`` (``plan``, ``reconcile``, ``doctor``, ``status``): only a problem in one of the
    :data:`ESSENTIAL_FILES` raises. Any other file that is not valid is left out, named in
    :attr:`~model.RepoConfig.unreadable`, and stands in the model as a placeholder that grants
    nothing (no supervisor, no playbook, no limit, no rate); the decisions that need it are blocked
    by their callers instead."""
    path = Path(repo)
    report, docs, playbooks, found = _validate(path, with_overrides=overrides)
    fatal = [p for p in report.problems if not degraded or p.file in ESSENTIAL_FILES]
    if fatal:
        first = fatal[0]
        more = f" and {len(report.problems) - 1} more" if len(report.problems) > 1 else ""
        raise ConfigError(f"{path}: invalid desired-state repo: {first}{more}", problems=list(report.problems))
    unreadable: dict[str, list[Problem]] = {}
    for problem in report.problems:
        unreadable.setdefault(problem.file, []).append(problem)

    def valid(rel: str) -> dict[str, Any] | None:
        return docs[rel].value if rel in docs and rel not in unreadable else None

    budget, fx, rbac = valid("policies/budget.yaml"), valid("policies/fx.yaml"), valid("policies/rbac.yaml")
    return model.RepoConfig(
        path=path,
        cluster=model.build_cluster(docs["haios.yaml"].value),
        desired=model.build_desired(docs["desired/state.yaml"].value),
        thresholds=model.build_thresholds(docs["policies/thresholds.yaml"].value),
        budget=model.build_budget(budget) if budget is not None else model.NO_BUDGET,
        fx=model.build_fx(fx) if fx is not None else model.NO_RATES,
        rbac=model.build_rbac(rbac) if rbac is not None else model.NO_SUPERVISORS,
        playbooks={
            name: model.build_playbook(doc.value)
            for name, doc in playbooks.items()
            if f"playbooks/{name}.yaml" not in unreadable
        },
        overrides=tuple(model.build_override(f"overrides/{n}.yaml", d.value) for n, d in sorted(found.items())),
        data_schemas=tuple(load_data_schemas(path)[0]),
        vclock_pruned=pruned_clocks(path),
        unreadable={
            rel: str(problems[0]) + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            for rel, problems in sorted(unreadable.items())
        },
    )


def pruned_clocks(repo: Path) -> tuple[str, ...]:
    """The nodes whose vector-clock entries are pruned: the tombstones of
    ``status/vclock-tombstones.yaml`` that were not revived (:mod:`haios.recovery.clockgc` keeps the
    file). One that cannot be read prunes nothing here; doctor reports it as an unreadable record."""
    try:
        doc = load_status(repo / TOMBSTONES_FILE, "a tombstone record", TOMBSTONES_FILE)
    except ConfigError:
        return ()
    stones = doc.get("tombstones") if isinstance(doc, dict) else None
    if not isinstance(stones, dict):
        return ()
    return tuple(
        sorted(
            name
            for name, stone in stones.items()
            if isinstance(name, str)
            and model.NAME_RE.fullmatch(name)
            and isinstance(stone, dict)
            and not stone.get("revived_at")
        )
    )


def check_override_file(repo: Path, path: Path) -> tuple[model.Override | None, list[Problem]]:
    """One override file, wherever it is (a pull request's checkout): YAML safety, its schema, the
    payload's schema and canonical form, its trace id against the file name and its cluster against
    ``haios.yaml``. Returns the override when every check passed, and the problems."""
    name = str(path)
    try:
        doc = load_yaml_file(path, name)
    except YamlRejected as exc:
        return None, [exc.problem]
    if doc is None:
        return None, [Problem(name, 1, 1, "(root)", "no such file")]
    if not isinstance(doc.value, dict):
        return None, [doc.problem((), "must be a mapping with apiVersion: haios/v1 and kind: Override")]
    problems = list(_schema_problems(doc, "override"))
    if problems:
        return None, problems
    cluster: YamlDoc | None = None
    try:
        cluster = load_yaml_file(repo / "haios.yaml", "haios.yaml", within=repo)
    except YamlRejected:
        cluster = None
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    problems = list(_check_override(stem, doc, cluster))
    if problems:
        return None, problems
    return model.build_override(name, doc.value), []
