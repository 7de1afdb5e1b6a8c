"""Exchange rates: conversion (never 1:1 for an unknown currency), the ECB import, stale-rate findings."""

from __future__ import annotations

import http.server
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import Invoke, subprocs
from helpers.cluster import git

from haios import budget as budget_module
from haios.budget import convert, import_ecb, parse_ecb, trace_cost
from haios.config import load_repo
from haios.config.model import Budget, FxRates, Limit
from haios.errors import ConfigError, UnknownCurrency, UsageError
from haios.ops.doctor import run_doctor

SAMPLE = Path(__file__).parent / "data" / "eurofxref-daily.xml"
SAMPLE_DAY = datetime(2026, 11, 26, 16, 0, tzinfo=UTC).timestamp()  # the ECB publishes around 16:00 CET
FX = FxRates("EUR", "2026-11-26", {"USD": 1.0437, "GBP": 0.83325, "JPY": 160.98})


def test_convert_goes_through_the_base_currency() -> None:
    assert convert(100.0, "EUR", "USD", FX) == pytest.approx(104.37)
    assert convert(104.37, "USD", "EUR", FX) == pytest.approx(100.0)
    assert convert(83.325, "GBP", "JPY", FX) == pytest.approx(16098.0)
    assert convert(5.0, "XAU", "XAU", FX) == 5.0
    with pytest.raises(UnknownCurrency, match="no exchange rate for CHF"):
        convert(1.0, "CHF", "EUR", FX)


def test_trace_cost_per_region_in_its_currency() -> None:
    budget = Budget(Limit("EUR", 500.0), {"us-east": Limit("USD", 500.0)})
    totals = trace_cost(
        [
            ("us-east", "vm", {"amount": 400, "currency": "EUR"}),
            ("us-east", "dns", {"amount": 100, "currency": "USD"}),
            (None, "vm", {"amount": 10}),  # no currency: the region's own
            (None, "free", None),
        ],
        budget,
        FX,
    )
    assert totals["us-east"].amount == pytest.approx(517.48) and totals["us-east"].over
    assert totals["default"].amount == 10.0 and not totals["default"].over
    assert str(totals["us-east"]) == "517.48 USD of 500 USD in region us-east"


def test_parse_ecb_reads_the_real_format() -> None:
    rates = parse_ecb(SAMPLE.read_bytes(), "eurofxref-daily.xml")
    assert rates.day == "2026-11-26" and len(rates.rates) == 30
    assert rates.rates["USD"] == 1.0437 and rates.rates["IDR"] == 16632.02


BAD = {
    "not xml": (b"USD,1.04\n", "not well-formed XML"),
    "truncated": (SAMPLE.read_bytes()[:400], "not well-formed XML"),
    "no cubes": (b"<Envelope><subject>x</subject></Envelope>", "no <Cube time=...>"),
    "wrong namespace": (SAMPLE.read_bytes().replace(b'eurofxref"', b'other"'), "no <Cube time=...>"),
    "bad rate": (SAMPLE.read_bytes().replace(b"rate='1.0437'", b"rate='1,0437'"), "USD rate '1,0437' of 2026-11-26"),
    "negative rate": (SAMPLE.read_bytes().replace(b"rate='1.0437'", b"rate='-1'"), "not a positive number"),
    "bad date": (SAMPLE.read_bytes().replace(b"2026-11-26", b"26.11.2026"), "is not a date"),
    "twice": (SAMPLE.read_bytes().replace(b"'JPY'", b"'USD'"), "USD appears twice"),
    "entity": (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
        "not well-formed XML",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_parse_ecb_refuses_malformed_files(case: str) -> None:
    data, message = BAD[case]
    with pytest.raises(UsageError) as info:
        parse_ecb(data, "rates.xml")
    assert info.value.message.startswith("rates.xml: ") and message in info.value.message


def test_fx_import_updates_fx_yaml_and_validate_accepts_it(repo: Path, cli: Invoke) -> None:
    fx = repo / "policies/fx.yaml"
    comment = fx.read_text().splitlines()[0]
    result = cli("--repo", repo, "budget", "fx-import", SAMPLE, "--max-age", "36500d")
    assert result.exit_code == 0, result.output
    assert "policies/fx.yaml: 30 rates of 2026-11-26 (EUR base)" in result.stdout
    text = fx.read_text()
    assert text.splitlines()[0] == comment  # comments survive the rewrite
    config = load_repo(repo)
    assert (config.fx.date, config.fx.rates["USD"], len(config.fx.rates)) == ("2026-11-26", 1.0437, 30)
    assert config.fx.source == "European Central Bank euro foreign exchange reference rates"
    assert cli("--repo", repo, "validate").exit_code == 0
    assert (
        "policies/fx.yaml"
        in subprocs.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True).stdout
    )  # written, not committed, unless asked


def test_fx_import_commit_and_json(repo: Path, cli: Invoke) -> None:
    git(repo, "config", "user.name", "haios tests")
    git(repo, "config", "user.email", "tests@haios.invalid")
    result = cli("--repo", repo, "-o", "json", "budget", "fx-import", SAMPLE, "--max-age", "36500d", "--commit")
    assert result.exit_code == 0, result.output
    assert '"date": "2026-11-26"' in result.stdout and '"commit": "' in result.stdout
    assert git(repo, "log", "-1", "--format=%s").strip() == "haios budget fx-import: ECB reference rates of 2026-11-26"
    assert git(repo, "status", "--porcelain").strip() == ""


def test_fx_import_refuses_malformed_and_stale_files_without_touching_fx_yaml(
    repo: Path, cli: Invoke, tmp_path: Path
) -> None:
    fx = repo / "policies/fx.yaml"
    before = fx.read_bytes()
    broken = tmp_path / "eurofxref-daily.xml"
    broken.write_bytes(SAMPLE.read_bytes()[:300])
    result = cli("--repo", repo, "budget", "fx-import", broken)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{broken}: not well-formed XML" in result.output
    old = tmp_path / "old.xml"
    old.write_bytes(SAMPLE.read_bytes().replace(b"2026-11-26", b"2020-01-02"))
    result = cli("--repo", repo, "budget", "fx-import", old)
    assert result.exit_code == 1 and "the rates are of 2020-01-02" in result.output and "days old" in result.output
    assert fx.read_bytes() == before
    with pytest.raises(UsageError, match=r"of 2026-11-26, 10\.0 days old"):
        import_ecb(repo, SAMPLE, now=SAMPLE_DAY + 8 * 3600 + 10 * 86400)
    assert import_ecb(repo, SAMPLE, now=SAMPLE_DAY)[0].day == "2026-11-26"  # fresh: accepted


def test_fx_import_never_drops_a_currency_the_budget_needs(repo: Path) -> None:
    fx = repo / "policies/fx.yaml"
    fx.write_text(fx.read_text().replace("  SEK: 11.5125", "  SEK: 11.5125\n  XAU: 0.00041"))
    budget = repo / "policies/budget.yaml"
    budget.write_text(
        budget.read_text().replace("regions: {}", "regions:\n  vault:\n    currency: XAU\n    limit_per_trace: 1")
    )
    before = fx.read_bytes()
    with pytest.raises(ConfigError, match="would make the repo invalid") as info:
        import_ecb(repo, SAMPLE, now=SAMPLE_DAY)
    assert "unknown currency XAU" in str(info.value.problems[0])
    assert fx.read_bytes() == before  # restored


def test_doctor_asks_for_rates_only_once_costs_are_converted(repo: Path) -> None:
    """The shipped rates carry no date (``source: default``): nothing to report while the budget
    and the playbooks name one currency; "import rates" once they name two; fx_stale once imported
    rates pass fx_max_age."""
    fx = load_repo(repo).fx
    assert fx.default and fx.date is None and fx.source == "default"
    assert not {f.kind for f in run_doctor(repo).findings} & {"fx_default", "fx_stale"}  # all in EUR
    budget = repo / "policies/budget.yaml"
    budget.write_text(
        budget.read_text().replace("regions: {}", "regions:\n  us-east:\n    currency: USD\n    limit_per_trace: 500")
    )
    (finding,) = [f for f in run_doctor(repo).findings if f.kind.startswith("fx_")]
    assert finding.kind == "fx_default" and finding.summary.endswith("never imported: import rates")
    assert "between EUR, USD" in finding.summary
    assert finding.fix == f"haios --repo {repo} budget fx-import"
    import_ecb(repo, SAMPLE, now=SAMPLE_DAY)
    text = (repo / "policies/fx.yaml").read_text()
    assert re.search(r"base: EUR\ndate: '?2026-11-26'?\n", text)  # the date goes where a reader looks for it
    assert not [f for f in run_doctor(repo, now=SAMPLE_DAY).findings if f.kind.startswith("fx_")]
    (stale,) = [f for f in run_doctor(repo, now=SAMPLE_DAY + 6 * 86400).findings if f.kind.startswith("fx_")]
    assert stale.kind == "fx_stale" and "rates are of 2026-11-26" in stale.summary
    assert "limit 4 days" in stale.summary and stale.fix == finding.fix


class _Ecb(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for the ECB's web server: ``/daily.xml`` the sample, ``/slow`` never
    answers in time, ``/big`` more than the limit, ``/broken`` cut XML, anything else 404."""

    stall = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        if self.path == "/slow":
            self.stall.wait(10)  # released when the test ends
            return
        body = {
            "/daily.xml": SAMPLE.read_bytes(),
            "/big": b"<x>" + b" " * (5 << 20),
            "/broken": SAMPLE.read_bytes()[:300],
        }.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def ecb() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ecb)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Ecb.stall.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
        _Ecb.stall.clear()


def test_fx_import_fetches_a_url(repo: Path, cli: Invoke, ecb: str) -> None:
    result = cli("--repo", repo, "budget", "fx-import", f"{ecb}/daily.xml", "--max-age", "36500d")
    assert result.exit_code == 0, result.output
    assert "policies/fx.yaml: 30 rates of 2026-11-26 (EUR base)" in result.stdout
    assert load_repo(repo).fx.rates["USD"] == 1.0437


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/missing", "HTTP 404"),
        ("/slow", "no answer within 0.5 s"),
        ("/big", "more than 4 MiB"),
        ("/broken", "not well-formed XML"),
    ],
)
def test_fx_import_from_a_url_that_fails_changes_nothing(
    repo: Path, cli: Invoke, ecb: str, path: str, said: str
) -> None:
    fx = repo / "policies/fx.yaml"
    before = fx.read_bytes()
    result = cli("--repo", repo, "budget", "fx-import", f"{ecb}{path}", "--timeout", "0.5", "--max-age", "36500d")
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[0]
    assert f"{ecb}{path}" in line and said in line, result.stderr
    assert fx.read_bytes() == before


def test_fx_import_from_nowhere_is_one_line(repo: Path, cli: Invoke) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli("--repo", repo, "budget", "fx-import", f"http://127.0.0.1:{port}/daily.xml", "--timeout", "2")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"http://127.0.0.1:{port}/daily.xml: " in result.stderr and "refused" in result.stderr.lower()


def test_fx_import_defaults_to_the_ecb(repo: Path, cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fetch(url: str, *, timeout: float) -> bytes:  # no internet here: the URL asked for is what counts
        asked.append(url)
        return SAMPLE.read_bytes()

    monkeypatch.setattr(budget_module, "fetch", fetch)
    result = cli("--repo", repo, "budget", "fx-import", "--max-age", "36500d")
    assert result.exit_code == 0, result.output
    assert asked == ["https://www.ecb.europa.eu/stats/eurofxref/eurofxref-daily.xml"]
