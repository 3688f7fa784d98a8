"""Pricing plans and invoices. Money is integer cents throughout; plans are given in currency
units (0.35) and must be whole cents. Pure: the ledger hands in brews per day.

Two plans:
- per brew: every brew in [from, to] at `price_per_brew`, shown per calendar month.
- monthly (HP Instant Ink style): `monthly_fee` buys `included` brews a month; brews beyond
  them use the rollover carried from earlier months, then cost `overage_per_brew` each. What is
  left unused (plan brews first, then rollover) carries into the next month, capped at
  `rollover_max`. Months are whole calendar months: an invoice bills every month that
  [from, to] touches, and the rollover chain starts at the plan's `start` month (default: the
  first month with usage), so an invoice for March alone carries March's true rollover.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from brewmeter.cloud.errors import Refused

# A month closes CLOSE_DAYS after its last day (the cloud's clock): its invoice line is then
# kept as it was; usage for it that arrives later is billed as an adjustment line.
CLOSE_DAYS = 3

PER_BREW = ("price_per_brew",)
CURRENCY = re.compile("[A-Za-z]{3}")
MONTHLY = ("monthly_fee", "included", "rollover_max", "overage_per_brew")


# The days the cloud bills (and queries take): protocol.yaml's Date.
FIRST_DATE, LAST_DATE = date(1970, 1, 1), date(2199, 12, 31)


def parse_date(v: Any) -> date:
    """A YYYY-MM-DD within [FIRST_DATE, LAST_DATE]; ValueError otherwise."""
    d = date.fromisoformat(v) if isinstance(v, str) and len(v) == 10 else None
    if d is None or not FIRST_DATE <= d <= LAST_DATE:
        raise ValueError(f"expected a YYYY-MM-DD from {FIRST_DATE} to {LAST_DATE}, got {v!r}")
    return d


class BadPlan(Refused, ValueError):
    """A plan that cannot be taken (HTTP 400)."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class NoPlan(BadPlan):
    """An invoice asked of a device without a plan (HTTP 409)."""

    status = 409


@dataclass(frozen=True, slots=True)
class DayBrews:
    brews: int
    estimated: int  # of which placed by estimate (clock unknown, device rebooted first)


def cents(v: Any, name: str) -> int:
    """Currency units (a JSON number) -> integer cents, refusing fractions of a cent."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise BadPlan(f"{name}: expected a number")
    try:
        c = Decimal(str(v)) * 100
    except InvalidOperation:
        raise BadPlan(f"{name}: not a number") from None
    if c < 0 or c != c.to_integral_value() or c > 10**9:
        raise BadPlan(f"{name}: expected a non-negative amount in whole cents, got {v}")
    return int(c)


def _count(v: Any, name: str) -> int:
    if type(v) is not int or not 0 <= v <= 10**6:
        raise BadPlan(f"{name}: expected a whole number of brews")
    return v


def parse_plan(d: Any) -> dict[str, Any]:
    """The stored form of a plan given as in PUT .../plan: amounts in cents."""
    if not isinstance(d, dict):
        raise BadPlan("expected a JSON object")
    currency = d.get("currency", "EUR")
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        raise BadPlan("currency: expected a 3-letter code")
    start = d.get("start", ...)
    if start is ...:
        start = None
    else:
        try:
            start = parse_date(start).replace(day=1).isoformat()
        except ValueError as e:
            raise BadPlan(f"start: {e}") from None
    keys = set(d) - {"currency", "start"}
    if keys == set(PER_BREW):
        return {"kind": "per_brew", "currency": currency.upper(), "start": start,
                "price_per_brew_cents": cents(d["price_per_brew"], "price_per_brew")}
    if {"monthly_fee", "included"} <= keys <= set(MONTHLY):
        return {"kind": "monthly", "currency": currency.upper(), "start": start,
                "monthly_fee_cents": cents(d["monthly_fee"], "monthly_fee"),
                "included": _count(d["included"], "included"),
                "rollover_max": _count(d.get("rollover_max", 0), "rollover_max"),
                "overage_per_brew_cents": cents(d.get("overage_per_brew", 0),
                                                "overage_per_brew")}
    raise BadPlan("expected {price_per_brew} or {monthly_fee, included, rollover_max, "
                  "overage_per_brew} (plus optional currency, start)")


def month_start(d: date) -> date:
    return d.replace(day=1)


def next_month(d: date) -> date:
    return (d.replace(day=28) + timedelta(days=4)).replace(day=1)


def _sum(days: dict[date, DayBrews], lo: date, hi: date) -> tuple[int, int]:
    picked = [v for d, v in days.items() if lo <= d <= hi]
    return sum(v.brews for v in picked), sum(v.estimated for v in picked)


def invoice(plan: dict[str, Any], days: dict[date, DayBrews], first: date,
            last: date) -> dict[str, Any]:
    """Lines per calendar month and the total, for usage `days` (every day with brews; the
    ledger passes at least the plan's whole history up to `last`)."""
    start = date.fromisoformat(plan["start"]) if plan.get("start") else None
    lines: list[dict[str, Any]] = []
    if plan["kind"] == "per_brew":
        price = plan["price_per_brew_cents"]
        lo = max(first, start) if start else first
        m = month_start(lo)
        while m <= last:
            a, b = max(m, lo), min(next_month(m) - timedelta(days=1), last)
            brews, est = _sum(days, a, b)
            lines.append({"month": m.strftime("%Y-%m"), "from": a.isoformat(),
                          "to": b.isoformat(), "brews": brews, "estimated_brews": est,
                          "price_per_brew_cents": price, "amount_cents": brews * price})
            m = next_month(m)
    else:
        origin = start or (month_start(min(days)) if days else month_start(first))
        included, cap = plan["included"], plan["rollover_max"]
        rollover = 0
        m = origin
        while m <= last:
            end = next_month(m) - timedelta(days=1)
            brews, est = _sum(days, m, end)
            from_plan = min(brews, included)
            from_rollover = min(brews - from_plan, rollover)
            overage = brews - from_plan - from_rollover
            left = min(cap, included - from_plan + rollover - from_rollover)
            if end >= first:  # months before the invoice only carry the rollover
                fee, over = plan["monthly_fee_cents"], overage * plan["overage_per_brew_cents"]
                lines.append({"month": m.strftime("%Y-%m"), "from": m.isoformat(),
                              "to": end.isoformat(), "brews": brews, "estimated_brews": est,
                              "included": included, "rollover_in": rollover,
                              "used_included": from_plan, "used_rollover": from_rollover,
                              "overage": overage, "rollover_out": left, "fee_cents": fee,
                              "overage_cents": over, "amount_cents": fee + over})
            rollover = left
            m = next_month(m)
    return {"from": first.isoformat(), "to": last.isoformat(), "currency": plan["currency"],
            "plan": plan, "months": lines,
            "brews": sum(line["brews"] for line in lines),
            "total_cents": sum(line["amount_cents"] for line in lines)}


def closable(today: date) -> date:
    """The first day of the newest month closed on `today` (months up to it are closed)."""
    return month_start(month_start(today - timedelta(days=CLOSE_DAYS)) - timedelta(days=1))


def invoice_plans(plans: list[dict[str, Any]], days: dict[date, DayBrews], first: date,
                  last: date) -> dict[str, Any]:
    """invoice() over a plan history: each plan (sorted by `start`; the first may have
    none: from the beginning) bills its months, from its start to the next one's."""
    lines: list[dict[str, Any]] = []
    for i, plan in enumerate(plans):
        lo = date.fromisoformat(plan["start"]) if plan.get("start") else FIRST_DATE
        hi = (date.fromisoformat(plans[i + 1]["start"]) - timedelta(days=1)
              if i + 1 < len(plans) else LAST_DATE)
        a, b = max(first, lo), min(last, hi)
        if a <= b:
            part = {d: v for d, v in days.items() if d <= hi}
            lines += invoice(plan, part, a, b)["months"]
    plan = plans[-1]
    for p in plans:
        if p.get("start") is None or date.fromisoformat(p["start"]) <= last:
            plan = p
    return {"from": first.isoformat(), "to": last.isoformat(), "currency": plan["currency"],
            "plan": plan, "plans": plans, "months": lines,
            "brews": sum(line["brews"] for line in lines),
            "total_cents": sum(line["amount_cents"] for line in lines)}
