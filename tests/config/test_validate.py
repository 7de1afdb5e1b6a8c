"""`validate_repo`: every problem in one run, with file, line, column and key; cross-file checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from haios import ConfigError, load_repo, validate_repo


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _problems(repo: Path) -> list[str]:
    return [str(p) for p in validate_repo(repo).problems]


def _ssh_key(comment: str = "") -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()


def test_validate_fresh_repo_is_valid(repo: Path) -> None:
    report = validate_repo(repo)
    assert report.ok, report.problems
    assert report.files == [
        "haios.yaml",
        "desired/state.yaml",
        "policies/thresholds.yaml",
        "policies/budget.yaml",
        "policies/fx.yaml",
        "policies/rbac.yaml",
        "playbooks/fakecloud-dns.yaml",
        "playbooks/fakecloud-vm.yaml",
        "playbooks/notify.yaml",
    ]


def test_validate_unknown_key_suggests_the_close_one(repo: Path) -> None:
    _edit(repo / "policies/thresholds.yaml", "  window: 100", "  windw: 100")
    assert _problems(repo) == ["policies/thresholds.yaml:8:3: phi.windw: unknown key 'windw' (did you mean 'window'?)"]


def test_validate_unknown_top_level_key_lists_allowed(repo: Path) -> None:
    _edit(repo / "haios.yaml", "kind: Cluster\n", "kind: Cluster\nfoo: 1\n")
    assert _problems(repo) == [
        "haios.yaml:5:1: foo: unknown key 'foo' (allowed: apiVersion, coordination, kind, name, nodes, replication)"
    ]


def test_validate_duplicate_key(repo: Path) -> None:
    _edit(repo / "desired/state.yaml", "suspend: false", "suspend: false\nsuspend: true")
    assert _problems(repo) == [
        "desired/state.yaml:6:1: suspend: duplicate key 'suspend' (first defined at line 5, column 1)"
    ]


def test_validate_python_tag(repo: Path) -> None:
    _edit(repo / "policies/thresholds.yaml", "runtime_mode: NORMAL", "runtime_mode: !!python/object:os.system NORMAL")
    assert _problems(repo) == [
        "policies/thresholds.yaml:6:15: runtime_mode: YAML tags are not allowed (found !!python/object:os.system)"
    ]


def test_validate_anchor_and_alias(repo: Path) -> None:
    _edit(repo / "policies/budget.yaml", "default:", "default: &d")
    assert _problems(repo) == [
        "policies/budget.yaml:6:10: default: anchors and aliases are not allowed (found anchor &d)"
    ]


def test_validate_invalid_utf8(repo: Path) -> None:
    path = repo / "policies/fx.yaml"
    path.write_bytes(path.read_bytes().replace(b"source: default", b"source: d\xe9fault"))
    assert _problems(repo) == ["policies/fx.yaml:10:10: (root): not valid UTF-8 (byte 0xe9 at offset 499)"]


def test_validate_k_out_of_range(repo: Path) -> None:
    _edit(repo / "policies/thresholds.yaml", "phi:\n", "phi:\n  k: 5\n")
    assert _problems(repo) == ["policies/thresholds.yaml:8:6: phi.k: must be at most 2.0 (found 5)"]


def test_validate_oversized_file(repo: Path) -> None:
    path = repo / "policies/rbac.yaml"
    path.write_bytes(path.read_bytes() + b"#" * (1024 * 1024))
    (size,) = [path.stat().st_size]
    assert _problems(repo) == [
        f"policies/rbac.yaml:1:1: (root): is {size} bytes, over the 1048576-byte limit for desired files"
    ]


def test_validate_reports_all_problems_in_one_run(repo: Path) -> None:
    _edit(repo / "haios.yaml", "transport: local", "transport: carrier-pigeon")
    _edit(repo / "policies/thresholds.yaml", "runtime_mode: NORMAL", "runtime_mode: TURBO")
    _edit(repo / "policies/budget.yaml", "limit_per_trace: 500", "limit_per_trace: -1")
    assert _problems(repo) == [
        "haios.yaml:8:16: nodes[0].transport: must be one of local, ssh (found 'carrier-pigeon')",
        "policies/budget.yaml:8:20: default.limit_per_trace: must be greater than 0 (found -1)",
        "policies/thresholds.yaml:6:15: runtime_mode: must be one of STRICT, NORMAL, DEV_FAST (found 'TURBO')",
    ]


def test_validate_wrong_type_and_missing_key(repo: Path) -> None:
    _edit(repo / "policies/rbac.yaml", "policy_version: 1\n", "")
    _edit(repo / "desired/state.yaml", "suspend: false", "suspend: 'no'")
    assert _problems(repo) == [
        "desired/state.yaml:5:10: suspend: must be true or false (found a string: 'no')",
        "policies/rbac.yaml:10:1: (root): missing required key 'policy_version'",
    ]


def test_validate_wrong_kind(repo: Path) -> None:
    _edit(repo / "policies/fx.yaml", "kind: FxRates", "kind: Budget")
    assert _problems(repo) == ["policies/fx.yaml:8:7: kind: this file must hold kind FxRates (found 'Budget')"]


def test_validate_bad_duration_names_the_format(repo: Path) -> None:
    _edit(repo / "policies/thresholds.yaml", "interval: 15s", "interval: 15 seconds")
    assert _problems(repo) == [
        "policies/thresholds.yaml:19:13: heartbeat.interval: invalid value '15 seconds': not a duration "
        "(use a number of seconds or a string such as '250ms', '15s', '10m', '2h', '90d')"
    ]


def test_validate_missing_file(repo: Path) -> None:
    (repo / "policies/budget.yaml").unlink()
    assert _problems(repo) == [
        "policies/budget.yaml:1:1: (root): file is missing (restore it from git or copy the default from 'haios init')"
    ]


def test_validate_not_a_repo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a haios desired-state repo"):
        validate_repo(tmp_path)


def test_validate_yml_and_unknown_policy_files(repo: Path) -> None:
    (repo / "playbooks/extra.yml").write_text("x: 1\n")
    (repo / "policies/other.yaml").write_text("x: 1\n")
    assert _problems(repo) == [
        "playbooks/extra.yml:1:1: (root): rename it to .yaml; .yml files are ignored",
        "policies/other.yaml:1:1: (root): unknown policy file (expected thresholds, budget, fx or rbac)",
    ]


def test_validate_membership_must_match_nodes(repo: Path) -> None:
    _edit(repo / "desired/state.yaml", "  node-3:", "  node-9:")
    assert _problems(repo) == [
        "desired/state.yaml:12:3: membership.node-9: node 'node-9' is not defined in haios.yaml",
        "haios.yaml:13:11: nodes[2].name: node 'node-3' has no membership entry in desired/state.yaml",
    ]


def test_validate_duplicate_node_and_ssh_keys_on_local_node(repo: Path) -> None:
    _edit(repo / "haios.yaml", "name: node-2", "name: node-1")
    _edit(repo / "haios.yaml", "    root: nodes/node-3", "    root: nodes/node-3\n    port: 22")
    assert _problems(repo) == [
        "desired/state.yaml:10:3: membership.node-2: node 'node-2' is not defined in haios.yaml",
        "haios.yaml:10:11: nodes[1].name: duplicate node name 'node-1' (also nodes[0])",
        "haios.yaml:16:5: nodes[2].port: 'port' applies only to transport: ssh",
    ]


def test_validate_ssh_node_needs_address_and_absolute_root(repo: Path) -> None:
    _edit(repo / "haios.yaml", "    transport: local\n    root: nodes/node-1", "    transport: ssh\n    root: rel/path")
    assert _problems(repo) == [
        "haios.yaml:7:5: nodes[0]: missing required key 'address'",
    ]
    _edit(repo / "haios.yaml", "    root: rel/path", "    address: 10.0.0.1\n    root: rel/path")
    assert _problems(repo) == ["haios.yaml:10:11: nodes[0].root: an ssh node's root must be an absolute path"]


def test_validate_resume_policy_and_its_playbook(repo: Path) -> None:
    text = (repo / "desired/state.yaml").read_text()
    assert "  CONSTRUCT:\n    on_partial: resume\n" in text  # the default: resumed when it can be, else rolled back
    assert _problems(repo) == []
    _edit(repo / "desired/state.yaml", "  ANALYZE:\n    on_partial: auto", "  ANALYZE:\n    on_partial: resume")
    assert _problems(repo) == []  # no playbook and no resumable command: it rolls back like auto
    _edit(
        repo / "desired/state.yaml",
        "  CONSTRUCT:\n    on_partial: resume",
        "  CONSTRUCT:\n    on_partial: resume\n    resume_playbook: construct-resume",
    )
    (problem,) = _problems(repo)
    assert problem.endswith("phases.CONSTRUCT.resume_playbook: no playbook named 'construct-resume' in playbooks/")
    (repo / "playbooks/construct-resume.yaml").write_text(
        "apiVersion: haios/v1\nkind: Playbook\nname: construct-resume\nresumes: CONSTRUCT\n"
        "run:\n  command: [haios-executor, resume, '{g}']\n"
    )
    assert _problems(repo) == []
    assert load_repo(repo).desired.phases["CONSTRUCT"].resume_playbook == "construct-resume"
    _edit(
        repo / "desired/state.yaml",
        "  IDLE:\n    on_partial: auto",
        "  IDLE:\n    on_partial: auto\n    resume_playbook: construct-resume",
    )
    assert any("resume_playbook is only used with on_partial: resume" in p for p in _problems(repo))


def test_validate_playbook_name_and_exactly_one_purpose(repo: Path) -> None:
    (repo / "playbooks/vm.yaml").write_text(
        "apiVersion: haios/v1\nkind: Playbook\nname: other\nrun:\n  command: [/bin/true]\n  python: a.b:c\n"
    )
    assert _problems(repo) == [
        "playbooks/vm.yaml:1:1: (root): needs exactly one of 'compensates' or 'resumes'",
        "playbooks/vm.yaml:5:3: run: must have at most 1 keys (found 2)",
    ]


def test_validate_supervisor_keys_parse(repo: Path) -> None:
    good = _ssh_key("alice@laptop")
    rbac = repo / "policies/rbac.yaml"
    _edit(
        rbac,
        "supervisors: []",
        f"supervisors:\n  - name: alice\n    keys:\n      - {good}\n      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBB\n"
        f"  - name: bob\n    keys: ['{good}']\n    valid_after: 2026-02-01\n    valid_before: 2026-01-01T00:00:00Z\n",
    )
    from haios.sshkeys import parse_public_key

    fp = parse_public_key(good).fingerprint
    assert _problems(repo) == [
        "policies/rbac.yaml:17:9: supervisors[0].keys[1]: not a usable SSH public key: key blob's public key runs past its end",
        f"policies/rbac.yaml:19:12: supervisors[1].keys[0]: key {fp} is also listed for 'alice'; one key belongs to one person",
        "policies/rbac.yaml:21:19: supervisors[1].valid_before: valid_before must be later than valid_after",
    ]


def test_validate_rsa_key_too_short(repo: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    _edit(repo / "policies/rbac.yaml", "supervisors: []", f"supervisors:\n  - name: carol\n    keys: ['{line}']\n")
    assert _problems(repo) == [
        "policies/rbac.yaml:15:12: supervisors[0].keys[0]: not a usable SSH public key: "
        "RSA key has 1024 bits; at least 2048 are required"
    ]


def test_validate_budget_currency_needs_fx_rate(repo: Path) -> None:
    _edit(repo / "policies/budget.yaml", "regions: {}", "regions:\n  asia: {currency: XYZ, limit_per_trace: 9}")
    assert _problems(repo) == [
        "policies/budget.yaml:10:20: regions.asia.currency: unknown currency XYZ: policies/fx.yaml has no rate for it"
    ]


def test_validate_threshold_relationships(repo: Path) -> None:
    _edit(repo / "policies/thresholds.yaml", "  window: 45s", "  window: 10s")
    assert _problems(repo) == [
        "policies/thresholds.yaml:22:11: partition.window: the partition window must be longer than the heartbeat interval"
    ]


def _override(payload: dict[str, object]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return f"apiVersion: haios/v1\nkind: Override\npayload: '{text}'\nsignatures: []\n"


def _payload(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schema": "haios-override/v1",
        "cluster": "demo-repo",
        "trace_id": "t-1",
        "action": "resume",
        "reason": "compensator fixed",
        "issued_at": 1_790_000_000,
        "expires_at": 1_790_086_400,
        "nonce": "0" * 32,
        "policy_version": 1,
    }
    base.update(changes)
    return base


def test_validate_override_payload(repo: Path) -> None:
    (repo / "overrides/t-1.yaml").write_text(_override(_payload()))
    assert _problems(repo) == []
    (repo / "overrides/t-2.yaml").write_text(_override(_payload(cluster="other", action="explode")))
    assert _problems(repo) == [
        "overrides/t-2.yaml:3:10: payload: payload field action: 'explode' is not one of ['resume', 'abort', 'force-rollback']",
        "overrides/t-2.yaml:3:10: payload: payload is for cluster 'other', not 'demo-repo'",
        "overrides/t-2.yaml:3:10: payload: payload trace_id 't-1' does not match the file name 't-2'",
    ]


def test_validate_override_payload_not_canonical(repo: Path) -> None:
    text = json.dumps(_payload(), sort_keys=True)
    (repo / "overrides/t-1.yaml").write_text(
        f"apiVersion: haios/v1\nkind: Override\npayload: '{text}'\nsignatures: []\n"
    )
    assert _problems(repo) == [
        "overrides/t-1.yaml:3:10: payload: payload is not canonical JSON (keys sorted, no whitespace)"
    ]


def test_load_repo_builds_the_model_with_defaults(repo: Path) -> None:
    config = load_repo(repo)
    assert config.cluster.name == "demo-repo"
    assert [n.name for n in config.cluster.nodes] == ["node-1", "node-2", "node-3"]
    assert config.desired.active_members() == ["node-1", "node-2", "node-3"]
    assert config.thresholds.phi.k == 1.6
    assert config.thresholds.phi.priors["CONSTRUCT"] == 120.0
    assert config.thresholds.partition_window == 45.0
    assert config.thresholds.t_blocked == 3600.0
    assert config.budget.for_region("nowhere").limit_per_trace == 500.0
    assert config.playbooks["notify"].compensates == "notify"


def test_load_repo_runtime_mode_sets_k_and_k_overrides(repo: Path) -> None:
    _edit(repo / "policies/thresholds.yaml", "runtime_mode: NORMAL", "runtime_mode: STRICT")
    assert load_repo(repo).thresholds.phi.k == 1.2
    _edit(repo / "policies/thresholds.yaml", "phi:\n", "phi:\n  k: 1.9\n")
    assert load_repo(repo).thresholds.phi.k == 1.9


def test_load_repo_invalid_raises_config_error_with_all_problems(repo: Path) -> None:
    _edit(repo / "policies/thresholds.yaml", "phi:\n", "phi:\n  k: 5\n")
    _edit(repo / "haios.yaml", "kind: Cluster\n", "kind: Cluster\nfoo: 1\n")
    with pytest.raises(ConfigError) as info:
        load_repo(repo)
    assert len(info.value.problems) == 2
    assert "invalid desired-state repo: haios.yaml:5:1: foo: unknown key 'foo'" in info.value.message
    assert info.value.message.endswith(" and 1 more")


FILES = ["haios.yaml", "desired/state.yaml", "policies/thresholds.yaml", "policies/rbac.yaml", "playbooks/notify.yaml"]


@settings(max_examples=60)
@given(index=st.sampled_from(FILES), data=st.binary(max_size=600))
def test_property_any_bytes_in_any_file_give_a_verdict(repo: Path, index: str, data: bytes) -> None:
    (repo / index).write_bytes(data)
    report = validate_repo(repo)  # never raises for file content
    for problem in report.problems:
        assert problem.line >= 1 and problem.column >= 1 and problem.key


@settings(max_examples=60)
@given(
    index=st.sampled_from(FILES),
    position=st.integers(min_value=0, max_value=10_000),
    byte=st.integers(min_value=0, max_value=255),
)
def test_property_mutated_byte_gives_a_verdict(repo: Path, index: str, position: int, byte: int) -> None:
    path = repo / index
    original = path.read_bytes()
    data = bytearray(original)
    data[position % len(data)] = byte
    path.write_bytes(bytes(data))
    try:
        validate_repo(repo)
    finally:
        path.write_bytes(original)
