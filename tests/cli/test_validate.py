"""``haios validate`` through the command line: exact output, exit codes, JSON."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import Invoke


def test_validate_invalid_lists_problems_and_exits_one(cli: Invoke, repo: Path) -> None:
    text = (repo / "policies/thresholds.yaml").read_text()
    (repo / "policies/thresholds.yaml").write_text(text.replace("phi:\n", "phi:\n  k: 5\n"))
    (repo / "haios.yaml").write_text((repo / "haios.yaml").read_text() + "nodes: []\n")
    result = cli("--repo", repo, "validate")
    assert result.exit_code == 1
    assert result.stdout == (
        "haios.yaml:20:1: nodes: duplicate key 'nodes' (first defined at line 6, column 1)\n"
        "policies/thresholds.yaml:8:6: phi.k: must be at most 2.0 (found 5)\n"
    )
    assert result.stderr == "2 problems in 2 files\n"
    assert "Traceback" not in result.output


def test_validate_repo_option_after_command(cli: Invoke, repo: Path) -> None:
    result = cli("validate", "--repo", repo)
    assert result.exit_code == 0
    assert result.stdout == f"{repo}: valid (9 files)\n"


def test_validate_json(cli: Invoke, repo: Path) -> None:
    (repo / "policies/fx.yaml").write_bytes(b"kind: FxRates\napiVersion: haios/v1\nbase: EURO\n")
    result = cli("--repo", repo, "--output", "json", "validate")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["valid"] is False
    assert data["problems"] == [
        {
            "file": "policies/fx.yaml",
            "line": 1,
            "column": 1,
            "key": "(root)",
            "message": "missing required key 'rates'",
        },
        {
            "file": "policies/fx.yaml",
            "line": 3,
            "column": 7,
            "key": "base",
            "message": "invalid value 'EURO': not a currency code (three capital letters, such as EUR)",
        },
    ]


def test_validate_not_a_repo_is_one_line_error(cli: Invoke, tmp_path: Path) -> None:
    result = cli("--repo", tmp_path, "validate")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {tmp_path}: not a haios desired-state repo (no haios.yaml) "
        "(hint: pass --repo DIR, or create one with 'haios init DIR')\n"
    )


def test_validate_not_a_repo_json_error(cli: Invoke, tmp_path: Path) -> None:
    result = cli("validate", "--repo", tmp_path, "-o", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "error": {
            "type": "ConfigError",
            "message": f"{tmp_path}: not a haios desired-state repo (no haios.yaml)",
            "hint": "pass --repo DIR, or create one with 'haios init DIR'",
            "exit_code": 1,
        }
    }
