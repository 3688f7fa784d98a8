"""Per-device quotas on reports: how many, and how many ledger rows they write, as token
buckets that refill with time (a burst, then a steady rate). A report over either is a 429
with Retry-After, nothing stored. Pure: the state, the time and the report's rows are
arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass

from brewmeter.cloud.report import Report

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Quota:
    """A device sends about a dozen reports a day, a few more to page its history after
    days offline; its largest report writes about 8,500 rows (the protocol's limits)."""
    reports_burst: int = 120
    reports_per_day: int = 1440  # one a minute, sustained
    rows_burst: int = 20_000
    rows_per_day: int = 200_000


@dataclass(frozen=True, slots=True)
class Level:
    """What a device has left: reports and rows, at time `at` (seconds)."""
    reports: float
    rows: float
    at: float


def rows(r: Report) -> int:
    """The ledger rows a report writes at most (its counters, bucket fields, events, orders
    and supplies' fields)."""
    return (len(r.counters) + sum(len(b.fields) + 1 for b in r.days) + len(r.events)
            + len(r.orders) + sum(len(v) for v in r.supplies.values()) + 1)


def take(q: Quota, level: Level | None, now: float, n_rows: int) -> tuple[Level, int]:
    """(the level after this report, 0) if the device may send it now, else (the level
    without it, seconds until it may: Retry-After)."""
    if level is None:
        reports, rows_left = float(q.reports_burst), float(q.rows_burst)
    else:
        dt = max(0.0, now - level.at) / DAY_S
        reports = min(q.reports_burst, level.reports + dt * q.reports_per_day)
        rows_left = min(q.rows_burst, level.rows + dt * q.rows_per_day)
    if reports >= 1 and rows_left >= n_rows:
        return Level(reports - 1, rows_left - n_rows, now), 0
    wait = max((1 - reports) / q.reports_per_day, (n_rows - rows_left) / q.rows_per_day)
    return Level(reports, rows_left, now), max(1, math.ceil(wait * DAY_S))
