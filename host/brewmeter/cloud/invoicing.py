"""Billing over the ledger: usage per day from every kind of bucket, months that close, and
invoices (billing.py is the pure arithmetic). A service over the ledger's database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from brewmeter.cloud import billing
from brewmeter.cloud.db import Conn, Database
from brewmeter.cloud.devices import need, plans
from brewmeter.cloud.errors import UnknownDevice
from brewmeter.cloud.records import _brews, day_date, day_number


def usage(c: Conn, device_id: str, first: int, last: int) -> dict[int, dict[str, Any]]:
    """Per day in [first, last]: summed fields of its dated bucket and of the undated,
    folded and gap buckets placed on it, its brews (each bucket's, see _brews) and how
    many of them were estimated."""
    out: dict[int, dict[str, Any]] = {}
    buckets: dict[tuple[Any, ...], tuple[int, bool, dict[str, int]]] = {}
    span = (device_id, first, last)
    for key, day, est, f, v in c.execute(
            "SELECT 'd' || day, day, 0, field, value FROM day_usage "
            "WHERE device=? AND day BETWEEN ? AND ? UNION ALL "
            "SELECT 'l' || p.boot || ':' || p.at_ms, p.day, p.estimated, u.field, "
            "u.value FROM loose_place p JOIN loose_usage u USING (device, boot, at_ms) "
            "WHERE p.device=? AND p.day BETWEEN ? AND ? UNION ALL "
            "SELECT 'f' || p.fold, p.day, 1, u.field, u.value FROM fold_place p "
            "JOIN fold_usage u USING (device, fold) "
            "WHERE p.device=? AND p.day BETWEEN ? AND ? UNION ALL "
            "SELECT 'g' || day, day, 1, 'brews_total', brews FROM gap_usage "
            "WHERE device=? AND day BETWEEN ? AND ?", span * 4):
        buckets.setdefault(key, (day, bool(est), {}))[2][f] = v
    for day, est, fields in buckets.values():
        s = out.setdefault(day, {"fields": {}, "brews": 0, "estimated": 0})
        for f, v in fields.items():
            s["fields"][f] = s["fields"].get(f, 0) + v
        n = _brews(fields)
        s["brews"] += n
        s["estimated"] += n if est else 0
    return out


def close_months(c: Conn, dev: str, now: float,
                 device: tuple[str | None, float] | None = None) -> None:
    """Close the months whose time has come (billing.CLOSE_DAYS after their end): keep
    their invoice lines as they are, before this report's usage lands. A month closes once:
    its line's key is (device, month), and a second close of it keeps the first. `device`:
    its (closed_through, created), when the caller has read them in this transaction."""
    upto = billing.closable(datetime.fromtimestamp(now, UTC).date())
    through, created = device or c.execute(
        "SELECT closed_through, created FROM devices WHERE id=?", (dev,)).fetchone()
    if through is not None and through >= upto.isoformat():
        return
    had = plans(c, dev)
    end = billing.next_month(upto) - timedelta(days=1)
    if had:
        used_by_day = usage(c, dev, 0, day_number(end))
        # From the device's first month (its registration, or earlier usage): every
        # month is closed, empty ones too, so any usage for it later is an adjustment.
        used = [n for n, u in used_by_day.items() if u["brews"]]
        first = billing.next_month(date.fromisoformat(through)) if through else \
            billing.month_start(min([datetime.fromtimestamp(created, UTC).date()]
                                    + [day_date(n) for n in used[:1]]))
        if first <= upto:
            brews = {day_date(n): billing.DayBrews(u["brews"], u["estimated"])
                     for n, u in used_by_day.items() if u["brews"]}
            lines = billing.invoice_plans(had, brews, first, end)["months"]
            c.executemany("INSERT INTO closed_months (device, month, line) VALUES (?, ?, ?) "
                          "ON CONFLICT (device, month) DO NOTHING",
                          [(dev, ln["month"], json.dumps(ln)) for ln in lines])
    c.execute("UPDATE devices SET closed_through=? WHERE id=?", (upto.isoformat(), dev))


class Billing:
    def __init__(self, db: Database, now: Callable[[], float] = time.time) -> None:
        self.db, self.now = db, now

    def invoice(self, device_id: str, first: date, last: date) -> dict[str, Any] | None:
        """The bill for [first, last] under the device's plans (see billing); None if the
        device is unknown; billing.NoPlan if it has no plan. A closed month's line is the
        one kept when it closed (`closed`: true); usage for it found since is an adjustment
        line in `adjustments` (a credit if negative), also in `brews` and `total_cents`."""
        try:
            with self.db.tx() as db:  # closing is due whoever asks first
                need(self.db, db, device_id)
                close_months(db, device_id, self.now())
                had = plans(db, device_id)
                closed = {m: json.loads(ln) for m, ln in db.execute(
                    "SELECT month, line FROM closed_months WHERE device=?", (device_id,))}
        except UnknownDevice:
            return None
        if not had:
            raise billing.NoPlan("the device has no plan (PUT .../plan)")
        if last < first:  # an empty period
            return {"id": device_id, "from": first.isoformat(), "to": last.isoformat(),
                    "currency": had[-1]["currency"], "plan": had[-1], "plans": had,
                    "months": [], "adjustments": [], "brews": 0, "total_cents": 0}
        # From the start (rollover needs the history) to the end of the last month (a monthly
        # plan bills whole months).
        with self.db.read() as c:
            used = usage(c, device_id, 0, day_number(billing.next_month(last)) - 1)
        brews = {}
        for n, s in used.items():
            if s["brews"]:
                brews[day_date(n)] = billing.DayBrews(s["brews"], s["estimated"])
        out = billing.invoice_plans(had, brews, first, last)
        adjustments = []
        for i, line in enumerate(out["months"]):
            kept = closed.get(line["month"])
            if kept is None or (kept["from"], kept["to"]) != (line["from"], line["to"]):
                continue  # open, or only part of the month asked for: as it stands now
            out["months"][i] = {**kept, "closed": True}
            db_brews = line["brews"] - kept["brews"]
            cents = line["amount_cents"] - kept["amount_cents"]
            if db_brews or cents:
                adjustments.append({"month": line["month"], "brews": db_brews,
                                    "estimated_brews": line["estimated_brews"]
                                    - kept["estimated_brews"], "amount_cents": cents,
                                    "reason": "late usage"})
        lines = out["months"] + adjustments
        return {"id": device_id, **out, "adjustments": adjustments,
                "brews": sum(x["brews"] for x in lines),
                "total_cents": sum(x["amount_cents"] for x in lines)}
