"""Override verification (SPEC §5): payload rules, signatures, one person one vote, the threshold."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from helpers import Invoke, subprocs
from hypothesis import given, settings
from hypothesis import strategies as st

from haios.config import load_repo
from haios.config.model import Rbac
from haios.config.validate import check_override_file
from haios.overrides.sshsig import sign
from haios.overrides.verify import APPLIED_FILE, check

PEOPLE = ("alice", "bob", "carol")


def _key(directory: Path, name: str) -> Path:
    path = directory / f"{name}_ed25519"
    subprocs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path


@pytest.fixture
def signed_repo(repo: Path, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """The template repo with three active supervisors (threshold 2), each with an ed25519 key."""
    keys = {p: _key(tmp_path, p) for p in PEOPLE}
    lines = ["apiVersion: haios/v1", "kind: Rbac", "policy_version: 3", "supervisors:"]
    for person, key in keys.items():
        lines += [f"  - name: {person}", "    keys:", f"      - {key.with_suffix('.pub').read_text().strip()}"]
    (repo / "policies/rbac.yaml").write_text("\n".join(lines) + "\n")
    return repo, keys


def _new(cli: Invoke, repo: Path, trace: str = "2-analyze-abc", *extra: str) -> Path:
    result = cli("--repo", repo, "override", "new", "--trace", trace, "--action", "resume", "--reason", "r", *extra)
    assert result.exit_code == 0, result.output
    return repo / "overrides" / f"{trace}.yaml"


def _sign(cli: Invoke, repo: Path, path: Path, person: str, key: Path, *extra: str) -> None:
    result = cli("--repo", repo, "override", "sign", path, "--principal", person, "--key", key, *extra)
    assert result.exit_code == 0, result.output


def _verify(cli: Invoke, repo: Path, path: Path) -> tuple[int, dict[str, object]]:
    result = cli("--repo", repo, "-o", "json", "override", "verify", path)
    return result.exit_code, json.loads(result.stdout)["overrides"][0]


def _keygen_sign(path: Path, person: str, key: Path, *opts: str) -> None:
    """Sign with the real ssh-keygen, the way a supervisor with an agent or hardware key would."""
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import LiteralScalarString

    yaml = YAML(typ="rt")
    doc = yaml.load(path.read_text())
    payload = path.with_suffix(".payload")
    payload.write_bytes(str(doc["payload"]).encode())
    cmd = ["ssh-keygen", "-q", "-Y", "sign", "-n", "haios-override", "-f", str(key), *opts, str(payload)]
    subprocs.run(cmd, check=True)
    doc["signatures"].append({"principal": person, "sig": LiteralScalarString(Path(f"{payload}.sig").read_text())})
    with open(path, "w") as fh:
        yaml.dump(doc, fh)


def test_acceptance_two_of_three(signed_repo: tuple[Path, dict[str, Path]], cli: Invoke) -> None:
    repo, keys = signed_repo
    path = _new(cli, repo)
    _sign(cli, repo, path, "alice", keys["alice"])
    text = cli("--repo", repo, "override", "verify", path)
    assert text.exit_code == 5 and "have 1 of 2 required (3 active supervisors): NOT VALID" in text.stdout
    _keygen_sign(path, "bob", keys["bob"])  # a signature made by ssh-keygen itself
    code, verdict = _verify(cli, repo, path)
    assert code == 0 and verdict["valid"] and (verdict["have"], verdict["need"]) == (2, 2)
    assert cli("--repo", repo, "validate").exit_code == 0  # the signed file is a valid repo file


def _payload_override(repo: Path, path: Path, **changes: object) -> None:
    """Rewrite the payload (canonically) with ``changes`` and drop the signatures."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    doc = yaml.load(path.read_text())
    payload = json.loads(str(doc["payload"]))
    payload.update(changes)
    doc["payload"] = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    doc["signatures"] = []
    with open(path, "w") as fh:
        yaml.dump(doc, fh)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        # times as offsets from when the test runs (parameters are made at collection, maybe long before)
        ({"expires_at": -10, "issued_at": -100}, "expired"),
        ({"issued_at": 600, "expires_at": 9000}, "in the future"),
        ({"policy_version": 9}, "newer than policies/rbac.yaml"),
    ],
)
def test_payload_rules(
    signed_repo: tuple[Path, dict[str, Path]], cli: Invoke, changes: dict[str, object], problem: str
) -> None:
    repo, keys = signed_repo
    path = _new(cli, repo)
    now = int(time.time())
    _payload_override(repo, path, **{k: now + v if k.endswith("_at") else v for k, v in changes.items()})
    for person in ("alice", "bob"):
        _sign(cli, repo, path, person, keys[person])
    code, verdict = _verify(cli, repo, path)
    assert code == 5 and any(problem in p for p in verdict["problems"])  # type: ignore[union-attr]


def test_reused_nonce_and_older_policy_version(signed_repo: tuple[Path, dict[str, Path]], cli: Invoke) -> None:
    repo, keys = signed_repo
    path = _new(cli, repo)
    for person in ("alice", "bob"):
        _sign(cli, repo, path, person, keys[person])
    nonce = json.loads(json.loads(json.dumps(str(_doc(path)["payload"]))))["nonce"]
    (repo / APPLIED_FILE).parent.mkdir(parents=True)
    (repo / APPLIED_FILE).write_text(f"nonces:\n  {nonce}: an earlier override\npolicy_version: 4\n")
    code, verdict = _verify(cli, repo, path)
    problems = " ".join(verdict["problems"])  # type: ignore[arg-type]
    assert code == 5 and "already used" in problems and "older than the last applied (4)" in problems


def _doc(path: Path) -> dict[str, object]:
    from ruamel.yaml import YAML

    loaded: dict[str, object] = YAML(typ="safe", pure=True).load(path.read_text())
    return loaded


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda t: t.replace('{"action"', '{ "action"'), "not canonical"),
        (lambda t: t.replace('"cluster":', '"threshold":1,"cluster":'), "threshold"),
        (lambda t: t.replace('"policy_version":3', '"policy_version":3.0'), "floats are not allowed"),
        (lambda t: t.replace('"reason":"r"', '"reason":"r","reason":"s"'), "duplicate key"),
    ],
)
def test_payload_must_be_the_exact_canonical_json(
    signed_repo: tuple[Path, dict[str, Path]], cli: Invoke, mutate: object, problem: str
) -> None:
    repo, _ = signed_repo
    path = _new(cli, repo)
    doc = _doc(path)
    payload = mutate(str(doc["payload"]))  # type: ignore[operator]
    path.write_text(f"apiVersion: haios/v1\nkind: Override\npayload: {json.dumps(payload)}\nsignatures: []\n")
    code, verdict = _verify(cli, repo, path)
    assert code == 5 and any(problem in p for p in verdict["problems"]), verdict  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("threshold: 1\n", "threshold"),
        ("x: &a 1\ny: *a\n", "alias"),
    ],
)
def test_override_file_extras_and_yaml_tricks(
    signed_repo: tuple[Path, dict[str, Path]], cli: Invoke, extra: str, problem: str
) -> None:
    repo, _ = signed_repo
    path = _new(cli, repo)
    path.write_text(path.read_text() + extra)
    code, verdict = _verify(cli, repo, path)
    assert code == 5 and any(problem in p for p in verdict["problems"]), verdict  # type: ignore[union-attr]


def test_wrong_trace_file_name_or_cluster(signed_repo: tuple[Path, dict[str, Path]], cli: Invoke) -> None:
    repo, _ = signed_repo
    path = _new(cli, repo)
    moved = path.with_name("2-analyze-other.yaml")
    path.rename(moved)
    code, verdict = _verify(cli, repo, moved)
    assert code == 5 and any("does not match the file name" in p for p in verdict["problems"])  # type: ignore[union-attr]
    path = _new(cli, repo, "3-idle-abc")
    _payload_override(repo, path, cluster="another")
    code, verdict = _verify(cli, repo, path)
    assert code == 5 and any("cluster 'another'" in p for p in verdict["problems"])  # type: ignore[union-attr]


def test_one_person_one_vote(signed_repo: tuple[Path, dict[str, Path]], cli: Invoke, tmp_path: Path) -> None:
    repo, keys = signed_repo
    second = _key(tmp_path, "alice2")
    rbac = repo / "policies/rbac.yaml"
    rbac.write_text(
        rbac.read_text().replace(
            "  - name: bob", f"      - {second.with_suffix('.pub').read_text().strip()}\n  - name: bob"
        )
    )
    path = _new(cli, repo)
    _sign(cli, repo, path, "alice", keys["alice"])
    _sign(cli, repo, path, "alice", keys["alice"])  # the same signature pasted twice (same key, same bytes)
    _keygen_sign(path, "alice", keys["alice"], "-O", "hashalg=sha256")  # one key, the other hash
    _sign(cli, repo, path, "alice", second)  # one person, a second key
    code, verdict = _verify(cli, repo, path)
    assert code == 5 and (verdict["have"], verdict["need"]) == (1, 2)
    reasons = [s["reason"] for s in verdict["signatures"]]  # type: ignore[union-attr]
    assert reasons[0] == "valid" and all("already counted" in r for r in reasons[1:])


def test_one_key_under_two_principals_counts_once(signed_repo: tuple[Path, dict[str, Path]], cli: Invoke) -> None:
    repo, keys = signed_repo
    path = _new(cli, repo)
    _sign(cli, repo, path, "alice", keys["alice"])
    _sign(cli, repo, path, "bob", keys["alice"])  # bob signs with alice's key
    config = load_repo(repo, overrides=False)
    alice_key = keys["alice"].with_suffix(".pub").read_text().strip()
    shared = tuple(
        dataclasses.replace(s, keys=(*s.keys, alice_key)) if s.name == "bob" else s for s in config.rbac.supervisors
    )  # validate refuses such a policy; the verifier must not count it twice either
    config = dataclasses.replace(config, rbac=Rbac(config.rbac.policy_version, shared))
    override, problems = check_override_file(repo, path)
    assert override is not None, problems
    verdict = check(config, override, time.time())
    assert verdict.have == 1 and "already counted for alice" in verdict.signatures[1].reason


@pytest.mark.parametrize("case", ["tampered", "not listed", "inactive", "outside window", "namespace git"])
def test_each_bad_signature_is_rejected(
    signed_repo: tuple[Path, dict[str, Path]], cli: Invoke, tmp_path: Path, case: str
) -> None:
    repo, keys = signed_repo
    path = _new(cli, repo)
    _sign(cli, repo, path, "alice", keys["alice"])
    rbac = repo / "policies/rbac.yaml"
    if case == "tampered":
        payload = str(_doc(path)["payload"]).encode()
        forged = sign(payload.replace(b'"r"', b'"x"'), keys["bob"], "haios-override")
        _append(path, "bob", forged)
    elif case == "not listed":
        _sign(cli, repo, path, "dave", _key(tmp_path, "dave"))
    elif case == "inactive":
        rbac.write_text(rbac.read_text().replace("  - name: bob\n", "  - name: bob\n    active: false\n"))
        _sign(cli, repo, path, "bob", keys["bob"])
    elif case == "outside window":
        rbac.write_text(
            rbac.read_text().replace("  - name: bob\n", "  - name: bob\n    valid_before: 2020-01-01T00:00:00Z\n")
        )
        _sign(cli, repo, path, "bob", keys["bob"])
    else:
        payload = str(_doc(path)["payload"]).encode()
        _append(path, "bob", sign(payload, keys["bob"], "git"))
    code, verdict = _verify(cli, repo, path)
    bob = verdict["signatures"][1]  # type: ignore[index]
    assert not bob["accepted"] and verdict["have"] == 1, verdict
    # an inactive supervisor does not count towards N either: 2 active, so 1 signature is enough
    assert (code, verdict["need"]) == ((0, 1) if case in ("inactive", "outside window") else (5, 2))


def _append(path: Path, person: str, armored: str) -> None:
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import LiteralScalarString

    yaml = YAML(typ="rt")
    doc = yaml.load(path.read_text())
    doc["signatures"].append({"principal": person, "sig": LiteralScalarString(armored)})
    with open(path, "w") as fh:
        yaml.dump(doc, fh)


@settings(max_examples=40, deadline=None)
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_mutations_never_pass_unless_payload_and_threshold_survive(
    signed_repo: tuple[Path, dict[str, Path]], cli: Invoke, position: int, byte: int
) -> None:
    repo, keys = signed_repo
    path = repo / "overrides" / "2-analyze-abc.yaml"
    if not path.exists():
        path = _new(cli, repo)
        for person in ("alice", "bob"):
            _sign(cli, repo, path, person, keys[person])
    original = path.read_bytes()
    payload = str(_doc(path)["payload"])
    mutated = bytearray(original)
    mutated[position % len(mutated)] = byte
    target = repo / "overrides" / "mutant" / "2-analyze-abc.yaml"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(bytes(mutated))
    override, _ = check_override_file(repo, target)
    if override is None:
        return
    verdict = check(load_repo(repo, overrides=False), override, time.time())
    if verdict.valid:
        assert override.payload == payload
        assert sum(1 for s in verdict.signatures if s.accepted) >= 2


def test_list_shows_each_state(signed_repo: tuple[Path, dict[str, Path]], cli: Invoke) -> None:
    repo, keys = signed_repo
    pending = _new(cli, repo, "1-analyze-aaa")
    _sign(cli, repo, pending, "alice", keys["alice"])
    valid = _new(cli, repo, "1-blueprint-bbb")
    for person in ("alice", "bob"):
        _sign(cli, repo, valid, person, keys[person])
    expired = _new(cli, repo, "1-construct-ccc")
    _payload_override(repo, expired, issued_at=int(time.time()) - 100, expires_at=int(time.time()) - 10)
    used = _new(cli, repo, "1-validate-ddd")
    nonce = json.loads(str(_doc(used)["payload"]))["nonce"]
    (repo / APPLIED_FILE).parent.mkdir(parents=True)
    (repo / APPLIED_FILE).write_text(f"nonces:\n  {nonce}: applied\npolicy_version: 3\n")
    (repo / "overrides/1-idle-eee.yaml").write_text(
        "apiVersion: haios/v1\nkind: Override\npayload: '{}'\nsignatures: []\n"
    )
    result = cli("--repo", repo, "-o", "json", "override", "list")
    states = {Path(r["file"]).stem: r["state"] for r in json.loads(result.stdout)["overrides"]}
    assert states == {
        "1-analyze-aaa": "pending",
        "1-blueprint-bbb": "valid",
        "1-construct-ccc": "expired",
        "1-validate-ddd": "applied",
        "1-idle-eee": "rejected",
    }


def test_validity_windows_are_utc_whatever_their_form() -> None:
    """A date alone means its midnight UTC, for the verifier as for 'haios validate'."""
    from datetime import UTC, datetime

    from haios.config.model import Supervisor
    from haios.overrides.verify import active

    midnight = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    for after in ("2026-03-01", "2026-03-01T00:00:00Z", "2026-03-01T01:00:00+01:00"):
        s = Supervisor("alice", (), valid_after=after)
        assert not active(s, midnight - 1) and active(s, midnight)


def test_an_unreadable_record_of_applied_overrides_is_a_clean_error(tmp_path: Path) -> None:
    from haios.errors import ConfigError
    from haios.overrides.verify import applied

    assert applied(tmp_path) == {"nonces": {}, "policy_version": 0}
    record = tmp_path / APPLIED_FILE
    record.parent.mkdir(parents=True)
    record.write_text("nonces: [unclosed\n")
    with pytest.raises(ConfigError) as failed:
        applied(tmp_path)
    assert str(record) in failed.value.message and "not a readable record of applied overrides" in failed.value.message
    assert failed.value.hint == f"restore it from git (git checkout -- {APPLIED_FILE})"
