"""The ledger for its owners and the query API: approving orders, refills, a device, its
days, events, orders and invoices. A part of the Ledger (mixed in)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from brewmeter.cloud import billing
from brewmeter.cloud.records import (
    Part,
    StateConflict,
    UnknownOrder,
    _brews,
    _iso,
    _order,
    day_date,
    day_number,
)
from brewmeter.cloud.report import unflatten
from brewmeter.cloud.tables import (
    ORDER_COLS,
)


class Queries(Part):

    # -- the owner: orders and refills ---------------------------------------------------------

    def approve(self, device_id: str, order: str, yes: bool) -> dict[str, Any]:
        """The owner approves (yes) or declines an order that needs approval. Returns the order
        (as in orders()). Raises UnknownDevice, UnknownOrder, or StateConflict if the order
        is not waiting for approval."""
        now = self.now()
        with self._tx() as db:
            self._need(db, device_id)
            row = db.execute("SELECT status FROM orders WHERE device=? AND id=?",
                             (device_id, order)).fetchone()
            if row is None:
                raise UnknownOrder(order)
            if row[0] != "needs_approval":
                raise StateConflict(f"order {order} is {row[0]}, not needs_approval")
            if yes:
                db.execute("UPDATE orders SET status='placed', placed_at=?, ship_at=?, "
                           "deliver_at=? WHERE device=? AND id=?",
                           (now, *self.merchant.schedule(now), device_id, order))
            else:
                db.execute("UPDATE orders SET status='declined', declined_at=? "
                           "WHERE device=? AND id=?", (now, device_id, order))
            row = db.execute(f"SELECT {ORDER_COLS} FROM orders WHERE device=? AND id=?",
                             (device_id, order)).fetchone()
        return _order(row, now)

    def refill(self, device_id: str, item: str) -> dict[str, Any]:
        """The owner says `item` was refilled (a new pack, a new filter) during the cycle the
        device last reported: replies carry {item: cycle} until the device reports a later
        cycle. Returns {item, cycle}. Raises UnknownDevice, or StateConflict if no report
        has shown that item's cycle."""
        with self._tx() as db:
            self._need(db, device_id)
            row = db.execute("SELECT value FROM supplies WHERE device=? AND item=? "
                             "AND field='cycle'", (device_id, item)).fetchone()
            if row is None:
                raise StateConflict(f"the device has not reported a cycle of {item!r}")
            db.execute("INSERT INTO refills (device, item, cycle, at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT DO UPDATE SET cycle=excluded.cycle, at=excluded.at",
                       (device_id, item, row[0], self.now()))
        return {"item": item, "cycle": row[0]}

    # -- queries -------------------------------------------------------------------------------

    def device(self, device_id: str) -> dict[str, Any] | None:
        with self._lock:
            db = self.db
            row = db.execute(
                "SELECT created, last_seq, last_seen, reports, fw, boot, uptime_ms, clock, "
                "desired_version, desired_settings, applied_version, rejected_version, "
                "rejected_reason, plan FROM devices WHERE id=?", (device_id,)).fetchone()
            if row is None:
                return None
            (created, last_seq, last_seen, reports, fw, boot, uptime_ms, clock, dv, ds, applied,
             rej_v, rej_reason, plan) = row
            counters = dict(db.execute("SELECT field, value FROM counters WHERE device=?",
                                       (device_id,)))
            flags = [{"kind": k, "field": f, "count": n, "first_seq": s0, "last_seq": s1,
                      "first_at": _iso(t0), "last_at": _iso(t1), **json.loads(detail)}
                     for k, f, n, s0, s1, detail, t0, t1 in db.execute(
                         "SELECT kind, field, count, first_seq, last_seq, detail, first_at, "
                         "last_at FROM flags WHERE device=? ORDER BY first_at, kind, field",
                         (device_id,))]
            (events,) = db.execute("SELECT count(*) FROM events WHERE device=?",
                                   (device_id,)).fetchone()
            supplies: dict[str, dict[str, int]] = {}
            for item, f, v in db.execute("SELECT item, field, value FROM supplies "
                                         "WHERE device=? ORDER BY item, field", (device_id,)):
                s = supplies.setdefault(item, {})
                if v is not None:
                    s[f] = v
            refill = dict(db.execute("SELECT item, cycle FROM refills WHERE device=?",
                                     (device_id,)))
            orders = self.orders(device_id)
        return {
            "id": device_id, "created": _iso(created), "last_seen": _iso(last_seen),
            "last_seq": last_seq, "reports": reports, "fw": fw, "boot": boot,
            "uptime_ms": uptime_ms, "clock": clock, "counters": unflatten(counters),
            "flags": flags, "events": events,
            "config": {"desired": {"version": dv, "settings": json.loads(ds)},
                       "applied": applied,
                       "rejected": None if rej_v is None else {"version": rej_v,
                                                               "reason": rej_reason}},
            "plan": None if plan is None else json.loads(plan),
            "supplies": supplies, "refill": refill, "orders": orders,
        }

    def _usage(self, device_id: str, first: int, last: int) -> dict[int, dict[str, Any]]:
        """Per day in [first, last]: summed fields of its dated bucket and of the undated,
        folded and gap buckets placed on it, its brews (each bucket's, see _brews) and how
        many of them were estimated."""
        out: dict[int, dict[str, Any]] = {}
        buckets: dict[tuple[Any, ...], tuple[int, bool, dict[str, int]]] = {}
        with self._lock:
            for key, day, est, f, v in self.db.execute(
                    "SELECT 'd' || day, day, 0, field, value FROM day_usage "
                    "WHERE device=?1 AND day BETWEEN ?2 AND ?3 UNION ALL "
                    "SELECT 'l' || p.boot || ':' || p.at_ms, p.day, p.estimated, u.field, "
                    "u.value FROM loose_place p JOIN loose_usage u USING (device, boot, at_ms) "
                    "WHERE p.device=?1 AND p.day BETWEEN ?2 AND ?3 UNION ALL "
                    "SELECT 'f' || p.fold, p.day, 1, u.field, u.value FROM fold_place p "
                    "JOIN fold_usage u USING (device, fold) "
                    "WHERE p.device=?1 AND p.day BETWEEN ?2 AND ?3 UNION ALL "
                    "SELECT 'g' || day, day, 1, 'brews_total', brews FROM gap_usage "
                    "WHERE device=?1 AND day BETWEEN ?2 AND ?3", (device_id, first, last)):
                buckets.setdefault(key, (day, bool(est), {}))[2][f] = v
        for day, est, fields in buckets.values():
            s = out.setdefault(day, {"fields": {}, "brews": 0, "estimated": 0})
            for f, v in fields.items():
                s["fields"][f] = s["fields"].get(f, 0) + v
            n = _brews(fields)
            s["brews"] += n
            s["estimated"] += n if est else 0
        return out

    def days(self, device_id: str, first: date, last: date) -> dict[str, Any] | None:
        """Usage per day in [first, last] (dates, inclusive), and the buckets not yet placed."""
        if self.device_key(device_id) is None:
            return None
        days = []
        for n, s in sorted(self._usage(device_id, day_number(first), day_number(last)).items()):
            fields = unflatten(s["fields"])
            days.append({"date": day_date(n).isoformat(), "day": n, **fields,
                         "brews_total": s["brews"], "estimated": bool(s["estimated"])})
        with self._lock:
            unplaced: dict[tuple[int, int], dict[str, int]] = {}
            for boot, at_ms, f, v in self.db.execute(
                    "SELECT p.boot, p.at_ms, u.field, u.value FROM loose_place p "
                    "JOIN loose_usage u USING (device, boot, at_ms) "
                    "WHERE p.device=? AND p.day IS NULL ORDER BY p.boot, p.at_ms", (device_id,)):
                unplaced.setdefault((boot, at_ms), {})[f] = v
        return {"id": device_id, "from": first.isoformat(), "to": last.isoformat(),
                "days": days,
                "unplaced": [{"boot": b, "at_ms": a, **unflatten(f)}
                             for (b, a), f in unplaced.items()]}

    def events(self, device_id: str, after: int = -1, limit: int = 1000
               ) -> list[dict[str, Any]] | None:
        if self.device_key(device_id) is None:
            return None
        with self._lock:
            rows = self.db.execute(
                "SELECT body, seq, received FROM events WHERE device=? AND id>? ORDER BY id "
                "LIMIT ?", (device_id, after, limit)).fetchall()
        return [{**json.loads(b), "seq": s, "received": _iso(t)} for b, s, t in rows]

    def orders(self, device_id: str) -> list[dict[str, Any]] | None:
        """The device's orders, oldest first, with their status now; None if unknown."""
        if self.device_key(device_id) is None:
            return None
        with self._lock:
            rows = self.db.execute(f"SELECT {ORDER_COLS} FROM orders WHERE device=? "
                                   "ORDER BY requested_at, id", (device_id,)).fetchall()
        now = self.now()
        return [_order(r, now) for r in rows]

    def invoice(self, device_id: str, first: date, last: date) -> dict[str, Any] | None:
        """The bill for [first, last] under the device's plans (see billing); None if the
        device is unknown; billing.BadPlan if it has no plan. A closed month's line is the
        one kept when it closed (`closed`: true); usage for it found since is an adjustment
        line in `adjustments` (a credit if negative), also in `brews` and `total_cents`."""
        if self.device_key(device_id) is None:
            return None
        with self._tx() as db:  # closing is due whoever asks first
            self._close(db, device_id, self.now())
            plans = self._plans(db, device_id)
            closed = {m: json.loads(ln) for m, ln in db.execute(
                "SELECT month, line FROM closed_months WHERE device=?", (device_id,))}
        if not plans:
            raise billing.BadPlan("the device has no plan (PUT .../plan)")
        if last < first:  # an empty period
            return {"id": device_id, "from": first.isoformat(), "to": last.isoformat(),
                    "currency": plans[-1]["currency"], "plan": plans[-1], "plans": plans,
                    "months": [], "adjustments": [], "brews": 0, "total_cents": 0}
        # From the start (rollover needs the history) to the end of the last month (a monthly
        # plan bills whole months).
        usage = self._usage(device_id, 0, day_number(billing.next_month(last)) - 1)
        brews = {}
        for n, s in usage.items():
            if s["brews"]:
                brews[day_date(n)] = billing.DayBrews(s["brews"], s["estimated"])
        out = billing.invoice_plans(plans, brews, first, last)
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

    def dump(self) -> str:
        """The whole database as SQL text: tests compare it to prove nothing changed."""
        with self._lock:
            return "\n".join(self.db.iterdump())

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {t: self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("devices", "reports", "counters", "day_usage", "loose_usage",
                              "fold_usage", "gap_usage", "events", "flags", "orders")}
