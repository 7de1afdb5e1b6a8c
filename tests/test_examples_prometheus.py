"""examples/prometheus: the alerting rules pass the real promtool (check and unit tests), and every
query of the Grafana dashboard is valid PromQL over series haios exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from helpers import promtool, subprocs

from haios.metrics import HaiosCollector

EXAMPLES = Path(__file__).resolve().parents[1] / "examples/prometheus"


def _run(*args: str, cwd: Path = EXAMPLES) -> subprocess.CompletedProcess[str]:
    return subprocs.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = _run("check", "rules", "haios-rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout
    tested = _run("test", "rules", "haios-rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_broken_rule_unit_test_fails(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against rules whose threshold moved."""
    rules = (
        (EXAMPLES / "haios-rules.yml").read_text().replace("max_io_overhead_ratio > 2.2", "max_io_overhead_ratio > 5")
    )
    (tmp_path / "haios-rules.yml").write_text(rules)
    (tmp_path / "haios-rules.test.yml").write_text((EXAMPLES / "haios-rules.test.yml").read_text())
    assert _run("test", "rules", "haios-rules.test.yml", cwd=tmp_path).returncode != 0


def _names(expr: str) -> set[str]:
    """The series a query selects (each dashboard query selects by instance: a name, then a brace)."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


def test_dashboard_queries_are_valid_promql_over_exported_series(faulty: Path, tmp_path: Path) -> None:
    dashboard = json.loads((EXAMPLES / "haios-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 12 and dashboard["uid"] == "haios-overview"
    # every query as a recording rule: promtool parses it (Grafana's variables given plain values)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:q{i}",
                        "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*"),
                    }
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard-rules.yml").write_text(json.dumps(rules))
    checked = _run("check", "rules", "dashboard-rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    families = {f.name for f in HaiosCollector(faulty, "sim").collect()}  # every family, samples or not
    for expr in exprs:
        assert _names(expr), f"{expr!r} selects no series"
        for name in _names(expr):
            family = re.sub(r"_(bucket|count|sum|total)$", "", name)
            assert family in families or name in families, f"{name} in {expr!r} is not a series haios exports"
