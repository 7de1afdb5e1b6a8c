"""The one way haios writes and reads a moment: UTC, ISO-8601, milliseconds, a ``Z``.

Control files, journals, the ledger, alerts, events and every time a person reads use it, so that
what one part writes another parses, and a person sees one form everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc(ts: float) -> str:
    """``ts`` (seconds since the epoch) as ``2026-11-30T10:18:16.123Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_utc(text: str) -> float:
    """The seconds since the epoch of a time :func:`utc` wrote (ValueError for anything else)."""
    return datetime.strptime(text, FORMAT).replace(tzinfo=UTC).timestamp()
