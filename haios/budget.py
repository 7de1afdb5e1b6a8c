"""Costs in many currencies, the per-trace cost cap (SPEC §4.4) and the ECB rate import.

``policies/fx.yaml`` quotes every currency against one base (the ECB's reference rates: units per
1 EUR). A cost in a currency without a rate is an error, never converted 1:1.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from .config import load_repo
from .config.model import Budget, FxRates
from .config.validate import validate_repo
from .errors import ConfigError, DownloadError, InputError, UnknownCurrency, UsageError
from .fsutil import atomic_write
from .untrusted import read_regular

FX_FILE = "policies/fx.yaml"
ECB_SOURCE = "European Central Bank euro foreign exchange reference rates"
ECB_DAILY_URL = "https://www.ecb.europa.eu/stats/eurofxref/eurofxref-daily.xml"
FETCH_LIMIT = 4 << 20  # the daily file is 2 KiB, the 90-day one 40 KiB: anything far bigger is not the ECB's
_ECB_NS = "http://www.ecb.int/vocabulary/2002-08-01/eurofxref"
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def convert(amount: float, currency: str, to: str, fx: FxRates) -> float:
    """``amount`` of ``currency`` in ``to``, through the base currency of ``fx``."""
    if currency == to:
        return amount

    def rate(c: str) -> float:
        if c == fx.base:
            return 1.0
        if c not in fx.rates:
            of = "the shipped default rates" if fx.date is None else f"rates of {fx.date}"
            raise UnknownCurrency(f"no exchange rate for {c} in {FX_FILE} ({of}, base {fx.base})")
        return fx.rates[c]

    return amount / rate(currency) * rate(to)


@dataclass
class RegionCost:
    """What one trace spent in one region, in the region's currency."""

    region: str
    currency: str
    limit: float
    amount: float = 0.0
    items: list[str] = field(default_factory=list)

    @property
    def over(self) -> bool:
        return self.amount > self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "amount": round(self.amount, 2),
            "currency": self.currency,
            "limit": self.limit,
            "over": self.over,
        }

    def __str__(self) -> str:
        return f"{self.amount:.2f} {self.currency} of {self.limit:g} {self.currency} in region {self.region}"


def trace_cost(
    costs: list[tuple[str | None, str, dict[str, Any] | None]], budget: Budget, fx: FxRates
) -> dict[str, RegionCost]:
    """Add up ``(region, what, cost)`` items per region, each converted into its region's currency.

    A cost without a currency is in its region's currency; one in a currency without a rate raises
    :class:`UnknownCurrency`.
    """
    totals: dict[str, RegionCost] = {}
    for region, what, cost in costs:
        name = region or "default"
        limit = budget.for_region(region)
        total = totals.setdefault(name, RegionCost(name, limit.currency, limit.limit_per_trace))
        if not cost or not cost.get("amount"):
            continue
        currency = str(cost.get("currency") or limit.currency)
        try:
            amount = float(cost["amount"])
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: cost {cost!r} is not a number") from None
        total.amount += convert(amount, currency, limit.currency, fx)
        total.items.append(f"{what}: {amount:g} {currency}")
    return totals


def fx_age(fx: FxRates, now: float) -> float:
    """Seconds since the end of the rates' date (infinite for the shipped defaults: never imported)."""
    if fx.date is None:
        return math.inf
    day = date.fromisoformat(fx.date)
    end = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + 86400.0
    return max(0.0, now - end)


# -- the ECB daily reference rates ---------------------------------------------------------------


@dataclass(frozen=True)
class EcbRates:
    day: str
    rates: dict[str, float]


def parse_ecb(data: bytes, name: str) -> EcbRates:
    """Read eurofxref-daily.xml: ``<Cube time="YYYY-MM-DD">`` holding ``<Cube currency="USD" rate="1.04"/>``.

    Entities and DTDs are refused (a rates file never needs them); the newest day is taken when the
    file holds several (the 90-day history file has the same shape).
    """
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    try:
        root = fromstring(data, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise UsageError(f"{name}: not well-formed XML ({exc})", hint="download eurofxref-daily.xml again") from None
    days: dict[str, dict[str, float]] = {}
    for cube in root.iter(f"{{{_ECB_NS}}}Cube"):
        day = cube.get("time")
        if day is None:
            continue
        try:
            date.fromisoformat(day)
        except ValueError:
            raise UsageError(f"{name}: Cube time={day!r} is not a date (YYYY-MM-DD)") from None
        rates: dict[str, float] = {}
        for child in cube.findall(f"{{{_ECB_NS}}}Cube"):
            currency, text = child.get("currency"), child.get("rate")
            if currency is None or text is None or not _CURRENCY.match(currency):
                raise UsageError(f"{name}: a rate entry of {day} lacks a currency code or a rate: {child.attrib}")
            try:
                rate = float(text)
            except ValueError:
                raise UsageError(f"{name}: {currency} rate {text!r} of {day} is not a number") from None
            if not rate > 0 or rate == float("inf"):
                raise UsageError(f"{name}: {currency} rate {text!r} of {day} is not a positive number")
            if currency in rates:
                raise UsageError(f"{name}: {currency} appears twice on {day}")
            rates[currency] = rate
        if rates:
            days[day] = rates
    if not days:
        raise UsageError(
            f"{name}: no <Cube time=...> with rates in the ECB namespace {_ECB_NS}",
            hint="this is not an ECB euro reference-rate file (eurofxref-daily.xml)",
        )
    newest = max(days)
    return EcbRates(newest, days[newest])


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def fetch(url: str, *, timeout: float, limit: int = FETCH_LIMIT) -> bytes:
    """The body of ``url`` (HTTP 200 only), read within ``timeout`` seconds per network operation and
    refused past ``limit`` bytes; every failure is one DownloadError naming the URL."""
    import urllib.error
    import urllib.request

    if not is_url(url):
        raise UsageError(f"{url}: only http:// and https:// URLs are fetched")
    request = urllib.request.Request(url, headers={"User-Agent": "haios budget fx-import"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked above
            if response.status != 200:
                raise DownloadError(f"{url}: HTTP {response.status} {response.reason}")
            body: bytes = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: {exc.reason}") from None
    except TimeoutError:
        raise DownloadError(f"{url}: no answer within {timeout:g} s") from None
    except (OSError, ValueError) as exc:  # a connection reset mid-body, a malformed URL
        raise DownloadError(f"{url}: {exc}") from None
    if len(body) > limit:
        raise DownloadError(f"{url}: more than {limit >> 20} MiB: not an ECB reference-rate file")
    return body


def read_source(source: str, *, timeout: float) -> bytes:
    """The bytes of ``source``: a URL fetched (:func:`fetch`), else a local file read."""
    if is_url(source):
        return fetch(source, timeout=timeout)
    path = Path(source)
    try:
        data = read_regular(path, "desired", within=path.parent)
    except InputError as exc:
        raise UsageError(exc.message) from None
    if data is None:
        raise UsageError(f"{source}: no such file")
    return data


def import_ecb(
    repo: Path, source: Path | str, *, now: float, max_age: float | None = None, timeout: float = 30.0
) -> tuple[EcbRates, list[str]]:
    """Write the rates of ``source`` (a file, or an http(s) URL fetched within ``timeout``) into
    ``policies/fx.yaml`` (comments kept), refusing rates older than ``max_age`` and anything that
    would leave the repo invalid. Returns the rates and the currencies dropped (those the new file no
    longer quotes)."""
    from ruamel.yaml import YAML

    data = read_source(str(source), timeout=timeout)
    rates = parse_ecb(data, str(source))
    config = load_repo(repo)
    if config.fx.base != "EUR":
        raise ConfigError(
            f"{repo / FX_FILE}: base is {config.fx.base}, but ECB rates are quoted against EUR",
            hint="set base: EUR in policies/fx.yaml to import ECB rates",
        )
    limit = config.budget.fx_max_age if max_age is None else max_age
    age = fx_age(FxRates("EUR", rates.day, rates.rates), now)
    if age > limit:
        raise UsageError(
            f"{source}: the rates are of {rates.day}, {age / 86400:.1f} days old (policies/budget.yaml fx_max_age "
            f"allows {limit / 86400:g})",
            hint="download today's file from the ECB, or pass --max-age",
        )
    if config.fx.date is not None and rates.day < config.fx.date:
        raise UsageError(f"{source}: rates of {rates.day} are older than those in {FX_FILE} ({config.fx.date})")
    path = repo / FX_FILE
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    doc = yaml.load(path.read_text(encoding="utf-8"))
    dropped = sorted(set(doc["rates"]) - set(rates.rates))
    if "date" in doc:
        doc["date"] = rates.day
    else:  # the shipped defaults have none: it goes after base, where a reader looks for it
        doc.insert(list(doc).index("base") + 1 if "base" in doc else 0, "date", rates.day)
    doc["source"] = ECB_SOURCE
    doc["rates"].clear()
    for currency in sorted(rates.rates):
        doc["rates"][currency] = rates.rates[currency]
    buf = io.StringIO()
    yaml.dump(doc, buf)
    before = path.read_bytes()
    atomic_write(path, buf.getvalue().encode("utf-8"))
    report = validate_repo(repo)
    if report.problems:
        atomic_write(path, before)  # never leave the repo invalid
        raise ConfigError(
            f"{path}: the imported rates would make the repo invalid: {report.problems[0]}",
            hint="a budget or playbook uses a currency the ECB file does not quote; add it by hand",
            problems=list(report.problems),
        )
    return rates, dropped
