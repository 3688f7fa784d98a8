"""The query API's reads: a device, its days, events, orders, and the ledger's size. A
service over the ledger's database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

from brewmeter.cloud.db import Database
from brewmeter.cloud.devices import Devices
from brewmeter.cloud.invoicing import usage
from brewmeter.cloud.records import _iso, _order, day_date, day_number
from brewmeter.cloud.report import unflatten
from brewmeter.cloud.tables import ORDER_COLS


class Queries:
    """What the query API and the web console read: a device, its days, events, orders."""

    def __init__(self, db: Database, devices: Devices, now: Callable[[], float] = time.time
                 ) -> None:
        self.db, self.devices, self.now = db, devices, now

    # -- queries -------------------------------------------------------------------------------

    def device(self, device_id: str) -> dict[str, Any] | None:
        with self.db.read() as db:
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

    def days(self, device_id: str, first: date, last: date) -> dict[str, Any] | None:
        """Usage per day in [first, last] (dates, inclusive), and the buckets not yet placed."""
        if self.devices.device_key(device_id) is None:
            return None
        days = []
        with self.db.read() as c:
            used = usage(c, device_id, day_number(first), day_number(last))
        for n, s in sorted(used.items()):
            fields = unflatten(s["fields"])
            days.append({"date": day_date(n).isoformat(), "day": n, **fields,
                         "brews_total": s["brews"], "estimated": bool(s["estimated"])})
        with self.db.read() as c:
            unplaced: dict[tuple[int, int], dict[str, int]] = {}
            for boot, at_ms, f, v in c.execute(
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
        if self.devices.device_key(device_id) is None:
            return None
        with self.db.read() as c:
            rows = c.execute(
                "SELECT body, seq, received FROM events WHERE device=? AND id>? ORDER BY id "
                "LIMIT ?", (device_id, after, limit)).fetchall()
        return [{**json.loads(b), "seq": s, "received": _iso(t)} for b, s, t in rows]

    def orders(self, device_id: str) -> list[dict[str, Any]] | None:
        """The device's orders, oldest first, with their status now; None if unknown."""
        if self.devices.device_key(device_id) is None:
            return None
        with self.db.read() as c:
            rows = c.execute(f"SELECT {ORDER_COLS} FROM orders WHERE device=? "
                                   "ORDER BY requested_at, id", (device_id,)).fetchall()
        now = self.now()
        return [_order(r, now) for r in rows]

    def recent_events(self, device_id: str, limit: int = 30,
                      skip: tuple[str, ...] = ("order_requested",)) -> Iterator[dict[str, Any]]:
        """The device's newest events (faults, service, refills ...), newest first."""
        with self.db.read() as c:
            rows = c.execute(
                f"SELECT body, received FROM events WHERE device=? AND kind NOT IN "
                f"({','.join('?' * len(skip))}) ORDER BY id DESC LIMIT ?",
                (device_id, *skip, limit)).fetchall()
        for body, t in rows:
            yield {**json.loads(body), "received": _iso(t)}

    def fault_count(self, device_id: str, since: float) -> int:
        """Fault events from the device received since `since`."""
        with self.db.read() as c:
            return c.execute("SELECT count(*) FROM events WHERE device=? AND "
                             "kind='fault' AND received>=?", (device_id, since)).fetchone()[0]

    def stats(self) -> dict[str, int]:
        with self.db.read() as c:
            return {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("devices", "reports", "counters", "day_usage", "loose_usage",
                              "fold_usage", "gap_usage", "events", "flags", "orders")}
