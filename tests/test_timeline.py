"""haios report --html: the timeline of a faulty simulator run, opened in real headless Chromium —
one lane per node, one bar per phase run, every recovery step and detection, no console errors."""

from __future__ import annotations

import json
import struct
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from helpers import Invoke, browse
from helpers.cluster import began

from haios.recovery.journal import JOURNAL_DIR, load
from haios.timeline import build, render
from haios.wal import RecordType, read_records


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, tag: str, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and cls in a.get("class", "").split()]


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def _window(cluster: Path) -> str:
    """A --since that reaches back to the cluster's first record, however long ago the session began."""
    return f"{int(time.time() - began(cluster)) + 600}s"


def _wal_facts(cluster: Path) -> dict[str, dict[str, int]]:
    facts: dict[str, dict[str, int]] = {}
    for root in sorted((cluster / "nodes").iterdir()):
        records = list(read_records(root / "wal"))
        facts[root.name] = {
            "bars": sum(1 for r in records if r.type is RecordType.BEGIN_PHASE),
            "recovery": sum(1 for r in records if r.type is RecordType.RECOVERY),
        }
    return facts


def test_report_in_headless_chromium(faulty: Path, cli: Invoke, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = cli("--repo", faulty, "-o", "json", "report", "--html", page, "--since", _window(faulty))
    assert result.exit_code == 0, result.output
    info: dict[str, Any] = json.loads(result.stdout)
    facts = _wal_facts(faulty)
    journals = list((faulty / JOURNAL_DIR).glob("*.yaml"))
    assert info["phase_runs"] == sum(f["bars"] for f in facts.values())
    assert info["detections"] == len(journals) >= 1
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text

    shown = browse(page, "--dump-dom")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert _console_errors(shown.stderr) == []
    dom = _Dom()
    dom.feed(shown.stdout)
    lanes = dom.having("g", "lane")
    assert [lane["data-node"] for lane in lanes] == sorted(facts)  # one lane per node
    bars = dom.having("rect", "bar")
    for node, f in facts.items():  # one bar per phase run, on its node's lane
        assert sum(1 for b in bars if b["data-detail"].startswith(f"{node} ")) == f["bars"]
        assert (
            sum(1 for m in dom.having("circle", "recovery") if m["data-detail"].startswith(f"{node} ")) == f["recovery"]
        )
    assert {b["data-phase"] for b in bars} <= {"ANALYZE", "BLUEPRINT", "CONSTRUCT", "VALIDATE", "IDLE"}
    for j in map(load, journals):  # the transition the fault left half done is on every participant's lane
        hit = {b["data-detail"].split()[0] for b in bars if (b["data-g"], b["data-phase"]) == (str(j.g), j.phase)}
        assert hit >= set(j.participants)
    assert sum(f["recovery"] for f in facts.values()) >= 1
    assert len(dom.having("line", "detection")) == len(journals)
    (body,) = [a for t, a in dom.elements if t == "body"]
    assert int(body["data-ready"]) == len(dom.having("rect", "bar")) + len(dom.having("circle", "recovery")) + len(
        dom.having("line", "detection")
    )  # the page's script ran to its end and wired every item

    shot = tmp_path / "report.png"
    taken = browse(page, f"--screenshot={shot}", "--window-size=1400,600")
    assert taken.returncode == 0 and _console_errors(taken.stderr) == []
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1400, 600)
    assert len(png) > 10_000  # not a blank page


def test_console_errors_are_caught(faulty: Path, tmp_path: Path) -> None:
    """The console check can fail: the same page with a script error in it."""
    page = tmp_path / "broken.html"
    text = render(build(faulty, since=began(faulty) - 600))
    page.write_text(text.replace("</body>", "<script>notAFunction();</script></body>"))
    shown = browse(page, "--dump-dom")
    assert any("notAFunction" in line for line in _console_errors(shown.stderr))


def test_the_window_leaves_older_runs_out(faulty: Path) -> None:
    later = time.time() + 3600
    timeline = build(faulty, since=later - 60, now=later)
    assert timeline.bars == [] and timeline.detect == [] and timeline.nodes
    assert "0 aborted, 0 open" in render(timeline)


def test_report_needs_a_good_since(faulty: Path, cli: Invoke, tmp_path: Path) -> None:
    result = cli("--repo", faulty, "report", "--html", tmp_path / "r.html", "--since", "yesterday")
    assert result.exit_code == 1 and "--since" in result.stderr and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("flag", ["--html"])
def test_report_is_documented(cli: Invoke, flag: str) -> None:
    assert flag in cli("report", "--help").stdout
