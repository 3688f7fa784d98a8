"""How a report is applied to the ledger: counters, day buckets, events, orders, supplies
and the reply (see ledger.py's docstring for the merge rules). A service over the ledger's
database.

Exactly once, on either engine and across processes: a batch's devices are locked first
(PostgreSQL: their rows, in id order; SQLite: the write lock of BEGIN IMMEDIATE), so one
device's reports apply one at a time; the report's (device, seq) key with its body's hash
makes a retry a duplicate (nothing applied again) and a replay a 409; events are keyed by
(device, id) and orders by (device, order id), inserted once; counters and buckets keep
the maximum, so applying what is already there changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from brewmeter.cloud import merchant
from brewmeter.cloud.db import Conn, Database
from brewmeter.cloud.errors import SeqConflict, UnknownDevice
from brewmeter.cloud.invoicing import close_months
from brewmeter.cloud.merchant import Merchant
from brewmeter.cloud.offers import ROLLING
from brewmeter.cloud.records import Reply, _brews, _without
from brewmeter.cloud.releases import Releases
from brewmeter.cloud.report import Report, parse_report
from brewmeter.cloud.shared import protocol as P
from brewmeter.cloud.tables import (
    CYCLE_SCOPED,
    DAY_MS,
    ORDER_COLS,
    SEQ_KEEP,
)

# The brews in a device's buckets, by kind of bucket (one statement: one round trip).
_BUCKETED = "SELECT " + ", ".join(
    f"(SELECT sum(b) FROM (SELECT coalesce(sum(CASE WHEN field LIKE 'brews.%' THEN value END), "
    f"max(CASE WHEN field='brews_total' THEN value END), 0) AS b "
    f"FROM {table} WHERE device=? GROUP BY {key}) AS t)"
    for table, key in (("day_usage", "day"), ("loose_usage", "boot, at_ms"),
                       ("fold_usage", "fold")))


class Merge:
    def __init__(self, db: Database, now: Callable[[], float] = time.time,
                 merchant: Merchant | None = None) -> None:
        self.db, self.now, self.merchant = db, now, merchant or Merchant()
        self.releasing = Releases(db, now)  # update statuses, offers

    # -- reports -------------------------------------------------------------------------------

    def apply_report(self, device_id: str, body: bytes, seq_header: str | None = None) -> Reply:
        """Parse and apply one report body (the Python API; the server uses apply_batch).
        Raises BadReport, UnknownDevice or SeqConflict, changing nothing."""
        (result,) = self.apply_batch([(device_id, parse_report(body, seq_header))])
        if isinstance(result, Exception):
            raise result
        return result

    def apply_batch(self, items: Sequence[tuple[str, Report]]) -> list[Reply | Exception]:
        """Apply reports in order in ONE transaction, each in its own savepoint: a report that
        fails (its exception is its result) leaves nothing behind; the others commit together.
        If the commit itself fails, this raises and none of them is stored."""
        results: list[Reply | Exception] = []
        now = self.now()
        with self.db.tx() as db:
            self.db.lock_devices(db, (device_id for device_id, _ in items))
            for device_id, report in items:
                db.execute("SAVEPOINT report")
                try:
                    results.append(self._apply(db, device_id, report, now))
                except Exception as e:
                    db.execute("ROLLBACK TO report")
                    results.append(e)
                    if isinstance(e, SeqConflict):  # remembered, to flag what follows
                        db.execute("UPDATE devices SET conflict_seq=? WHERE id=?",
                                   (e.highest, device_id))
                db.execute("RELEASE report")
        return results

    def _apply(self, db: Conn, dev: str, r: Report, now: float) -> Reply:
        row = db.execute("SELECT last_seq, max_boot, desired_version, desired_settings, "
                         "applied_version, rejected_version, conflict_seq, closed_through, "
                         "created, (SELECT digest FROM reports WHERE device=id AND seq=?), "
                         f"{ROLLING} FROM devices WHERE id=?", (r.seq, dev)).fetchone()
        if row is None:
            raise UnknownDevice(dev)
        (last_seq, max_boot, dv, ds, applied, rejected, conflict_seq, through, created, prev,
         rolling) = row
        if prev is not None:
            if prev != r.digest:
                raise SeqConflict(r.seq, last_seq)
            return self._reply(db, dev, r, now, last_seq, dv, ds, applied, rejected,
                               duplicate=True, rolling=rolling)
        if last_seq is not None and r.seq <= last_seq - SEQ_KEEP:
            raise SeqConflict(r.seq, last_seq, pruned=True)
        if conflict_seq is not None and r.seq <= conflict_seq:
            # After a 409 the device should go on above the reply's seq: one that goes on
            # below it (it lost its state and ignores the reply) is taken as sending old
            # reports, so its current state would not show. Flagged for the operator.
            self._flag(db, dev, "seq_backwards", "seq", r.seq, now,
                       {"conflict_seq": conflict_seq, "reported": r.seq})
        # What arrives from now on is late for closed months.
        close_months(db, dev, now, (through, created))
        db.execute("INSERT INTO reports (device, seq, digest, received) VALUES (?, ?, ?, ?)",
                   (dev, r.seq, r.digest, now))
        newest = last_seq is None or r.seq > last_seq
        if newest:  # prune the hashes below the floor
            db.execute("DELETE FROM reports WHERE device=? AND seq<=?", (dev, r.seq - SEQ_KEEP))
        lifetime = self._counters(db, dev, r, newest, now)
        self._days(db, dev, r, max_boot, now)
        self._events(db, dev, r, now)
        self._new_orders(db, dev, r, now, ds)
        self._supplies(db, dev, r)
        if newest or r.days:
            self._reconcile(db, dev, int(now // 86400), lifetime)
        if r.bad_update is not None:  # not recorded; the counts merge all the same
            self._flag(db, dev, "bad_update_status", "update", r.seq, now,
                       {"reported": P.cut(r.bad_update)})
        elif newest and r.update is not None:  # (a late report's is older news)
            self.releasing.record_status(db, dev, r.update)
        if newest and dv and r.applied is not None and r.applied > dv:
            # The device runs a later version than ours: our data went back (restored from
            # a backup). Versions only move forward: ours goes on above the device's.
            dv = r.applied + 1
            db.execute("UPDATE devices SET desired_version=? WHERE id=?", (dv, dev))
        if newest:
            last_seq, applied = r.seq, r.applied
            rejected, rej_reason = r.rejected or (None, None)
            db.execute("UPDATE devices SET last_seen=?, reports=reports+1, max_boot=?, "
                       "last_seq=?, fw=coalesce(?, fw), boot=?, uptime_ms=?, clock=?, "
                       "applied_version=?, rejected_version=?, rejected_reason=? WHERE id=?",
                       (now, max(max_boot, r.boot), r.seq, r.fw, r.boot, r.uptime_ms,
                        r.clock or None, applied, rejected, rej_reason, dev))
        else:
            db.execute("UPDATE devices SET last_seen=?, reports=reports+1, max_boot=? "
                       "WHERE id=?", (now, max(max_boot, r.boot), dev))
        return self._reply(db, dev, r, now, last_seq, dv, ds, applied, rejected,
                           rolling=rolling)

    def _counters(self, db: Conn, dev: str, r: Report, newest: bool,
                  now: float) -> int:
        """Merge the report's counters; returns the device's lifetime brews as stored now."""
        stored = dict(db.execute("SELECT field, value FROM counters WHERE device=?", (dev,)))
        # Cycle-scoped counters (filter_ml, ...) restart at each filter change: they keep the
        # maximum within one value of their scope counter, and start over when it grows.
        fresh: set[str] = set()
        for prefix, scope in CYCLE_SCOPED.items():
            mine, theirs = r.counters.get(scope), stored.get(scope)
            cycle = {f for f in r.counters if f.startswith(prefix)}
            if mine is None and theirs is not None and not newest:
                # A partial report (counters travel only when changed) without its scope:
                # its cycle is the one the device had then, maybe an earlier one. Only the
                # newest report is surely in the stored cycle; a late one's are left out.
                r = _without(r, cycle)
                continue
            if mine is None or theirs is None or mine == theirs:
                continue
            if mine > theirs:
                fresh |= cycle
            else:
                r = _without(r, cycle)  # from an earlier cycle, arriving late: ignored
        up = [(dev, f, v) for f, v in r.counters.items() if f in fresh]
        up += [(dev, f, v) for f, v in r.counters.items()
               if f not in fresh and v > stored.get(f, -1)]
        db.executemany("INSERT INTO counters (device, field, value) VALUES (?, ?, ?) "
                       "ON CONFLICT (device, field) DO UPDATE SET value=excluded.value", up)
        if newest:  # (an older report arriving late is expected to carry lower values)
            for f, v in r.counters.items():
                if f not in fresh and v < stored.get(f, v):  # went down: a replaced flash?
                    self._flag(db, dev, "counter_regression", f, r.seq, now,
                               {"stored": stored[f], "reported": v})
        merged = stored | {f: v for _, f, v in up}  # the rows as the upsert left them
        return _brews({f: v for f, v in merged.items()
                       if f == "brews_total" or f.startswith("brews.")})

    def _flag(self, db: Conn, dev: str, kind: str, fld: str, seq: int,
              now: float, detail: dict[str, Any]) -> None:
        db.execute("INSERT INTO flags (device, kind, field, count, first_seq, last_seq, detail, "
                   "first_at, last_at) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (device, kind, field) DO UPDATE SET count=flags.count+1, "
                   "last_seq=excluded.last_seq, "
                   "detail=excluded.detail, last_at=excluded.last_at",
                   (dev, kind, fld, seq, seq, json.dumps(detail), now, now))

    def _days(self, db: Conn, dev: str, r: Report, max_boot: int,
              now: float) -> None:
        """`max_boot`: the highest boot seen before this report."""
        today = int(now // 86400)
        ahead = today + P.DAY_AHEAD  # a day past this comes from a clock that is wrong
        future = [b for b in r.days if b.fold is None and b.day is not None and b.day > ahead]
        if future:  # flagged and not billed: the reconciliation bills them as estimated
            self._flag(db, dev, "future_bucket", "day", r.seq, now,
                       {"day": max(b.day for b in future if b.day is not None),
                        "today": today, "buckets": len(future)})
        dated = [(dev, b.day, f, v) for b in r.days
                 if b.fold is None and b.day is not None and b.day <= ahead
                 for f, v in b.fields.items()]
        # Buckets keep the maximum; where the stored value is as high (yesterday's bucket, a
        # retry) the row is left unwritten.
        db.executemany("INSERT INTO day_usage (device, day, field, value) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (device, day, field) DO UPDATE "
                       "SET value=excluded.value WHERE excluded.value > day_usage.value", dated)
        folds = [b for b in r.days if b.fold is not None]
        if folds:
            db.executemany("INSERT INTO fold_place (device, fold, day) VALUES (?, ?, ?) "
                           "ON CONFLICT (device, fold) DO NOTHING",
                           [(dev, b.fold, b.day if b.day and b.day <= ahead else today)
                            for b in folds])
            db.executemany("INSERT INTO fold_usage (device, fold, field, value) "
                           "VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (device, fold, field) DO UPDATE "
                           "SET value=excluded.value WHERE excluded.value > fold_usage.value",
                           [(dev, b.fold, f, v) for b in folds for f, v in b.fields.items()])
        loose = [b for b in r.days if b.fold is None and b.day is None]
        if loose:
            db.executemany("INSERT INTO loose_place (device, boot, at_ms, arrived_day) "
                           "VALUES (?, ?, ?, ?) ON CONFLICT (device, boot, at_ms) DO NOTHING",
                           [(dev, b.boot, b.at_ms, today) for b in loose])
            db.executemany("INSERT INTO loose_usage (device, boot, at_ms, field, value) "
                           "VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (device, boot, at_ms, field) DO UPDATE "
                           "SET value=excluded.value WHERE excluded.value > loose_usage.value",
                           [(dev, b.boot, b.at_ms, f, v) for b in loose
                            for f, v in b.fields.items()])
        anchored = False
        # The boot's start in unix ms; the first report with a clock fixes it (not a clock
        # more than DAY_AHEAD days ahead of the cloud's: that would bill into the future).
        if r.clock and r.clock // 86400 <= ahead:
            anchored = db.execute(
                "INSERT INTO boot_anchor (device, boot, epoch_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (device, boot) DO NOTHING",
                (dev, r.boot, r.clock * 1000 - r.uptime_ms)
            ).rowcount > 0
        # Place exactly what an anchored boot explains (also correcting earlier estimates, if
        # the report with the clock came late), then estimate what a newer boot orphaned.
        # Only when something could move: most reports skip both.
        if loose or anchored:  # (never further ahead than a dated bucket may be)
            db.execute("UPDATE loose_place SET day=(a.epoch_ms + loose_place.at_ms) / ?, "
                       "estimated=0 FROM boot_anchor a WHERE loose_place.device=? "
                       "AND a.device=loose_place.device AND a.boot=loose_place.boot "
                       "AND (loose_place.day IS NULL OR loose_place.estimated=1) "
                       "AND (a.epoch_ms + loose_place.at_ms) / ? <= ?",
                       (DAY_MS, dev, DAY_MS, ahead))
        if loose or r.boot > max_boot:
            db.execute("UPDATE loose_place SET day=arrived_day, estimated=1 "
                       "WHERE device=? AND day IS NULL AND boot < ?",
                       (dev, max(max_boot, r.boot)))

    def _reconcile(self, db: Conn, dev: str, today: int, lifetime: int) -> None:
        """`lifetime` brews against the buckets: brews in none get an estimated bucket (on
        `today`, the cloud's day the gap is first seen), so invoices stay complete; buckets
        that arrive later (the device pages its history) take them back, newest first."""
        bucketed = sum(int(n or 0)  # (a numeric on PostgreSQL)
                       for n in db.execute(_BUCKETED, (dev, dev, dev)).fetchone())
        gap = max(0, lifetime - bucketed)
        rows = db.execute("SELECT day, brews FROM gap_usage WHERE device=? ORDER BY day DESC",
                          (dev,)).fetchall()
        have = sum(n for _, n in rows)
        if gap > have:
            db.execute("INSERT INTO gap_usage (device, day, brews) VALUES (?, ?, ?) "
                       "ON CONFLICT (device, day) DO UPDATE "
                       "SET brews=gap_usage.brews+excluded.brews",
                       (dev, today, gap - have))
        excess = have - gap
        for day, n in rows:
            if excess <= 0:
                break
            take = min(n, excess)
            excess -= take
            if take == n:
                db.execute("DELETE FROM gap_usage WHERE device=? AND day=?", (dev, day))
            else:
                db.execute("UPDATE gap_usage SET brews=brews-? WHERE device=? AND day=?",
                           (take, dev, day))

    def _events(self, db: Conn, dev: str, r: Report, now: float) -> None:
        for ev in r.events:
            body = json.dumps(ev, sort_keys=True, separators=(",", ":"))
            cur = db.execute("INSERT INTO events (device, id, kind, body, seq, received) "
                             "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, id) DO NOTHING",
                             (dev, ev["id"], ev["kind"], body, r.seq, now))
            if cur.rowcount == 0:
                (old,) = db.execute("SELECT body FROM events WHERE device=? AND id=?",
                                    (dev, ev["id"])).fetchone()
                if old != body:  # an id reused for another event (a device that lost state)
                    self._flag(db, dev, "event_conflict", str(ev["id"]), r.seq, now,
                               {"stored": json.loads(old), "reported": ev})

    def _new_orders(self, db: Conn, dev: str, r: Report, now: float,
                    desired: str) -> None:
        # Every order_requested event, even a repeat under a new event id (a reboot) or one
        # whose event id clashed: the order id dedupes, and the first decision stands. It is
        # decided by the owner's rules as the owner set them (the desired settings), not as
        # the device says, against the cycle the device reported and the month's orders.
        if not r.order_events:
            return
        rules = merchant.Rules.of(json.loads(desired))
        month = datetime.fromtimestamp(now, UTC).date().replace(day=1)
        since = datetime(month.year, month.month, 1, tzinfo=UTC).timestamp()
        for ev in r.order_events:
            item, cycle = ev["item"], ev["cycle"]
            if db.execute("SELECT 1 FROM orders WHERE device=? AND id=?",
                          (dev, ev["order"])).fetchone():
                continue
            current = r.supplies.get(item, {}).get("cycle")
            if current is None:
                row = db.execute("SELECT value FROM supplies WHERE device=? AND item=? AND "
                                 "field='cycle'", (dev, item)).fetchone()
                current = row and row[0]
            (n,) = db.execute("SELECT count(*) FROM orders WHERE device=? AND "
                              "status!='declined' AND requested_at>=?", (dev, since)).fetchone()
            st, reason = self.merchant.decide(ev["order"], item, cycle, ev["ask"], rules,
                                              current, n)
            ship, deliver = self.merchant.schedule(now) if st == "placed" else (None, None)
            db.execute(f"INSERT INTO orders (device, {ORDER_COLS}) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (dev, ev["order"], item, cycle, ev["ask"] | rules.ask_first, st, now,
                        now if st == "placed" else None, now if st == "declined" else None,
                        ship, deliver, reason))

    def _supplies(self, db: Conn, dev: str, r: Report) -> None:
        if not r.supplies:
            return
        db.executemany("INSERT INTO supplies (device, item, field, value, seq) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device, item, field) DO UPDATE "
                       "SET value=excluded.value, seq=excluded.seq "
                       "WHERE excluded.seq > supplies.seq",
                       [(dev, item, f, v, r.seq) for item, fields in r.supplies.items()
                        for f, v in fields.items()])
        # A refill the owner announced is done once the device shows a later cycle.
        db.executemany("DELETE FROM refills WHERE device=? AND item=? AND cycle < ?",
                       [(dev, item, fields["cycle"]) for item, fields in r.supplies.items()
                        if fields.get("cycle") is not None])

    def _reply(self, db: Conn, dev: str, r: Report, now: float, last_seq: int,
               dv: int, ds: str, applied: int | None, rejected: int | None,
               duplicate: bool = False, rolling: bool = False) -> Reply:
        # Send the desired config while the device has not applied it, unless it has already
        # refused that very version (sending it again would only be refused again).
        config = None
        if dv and dv != applied and dv != rejected:
            config = {"version": dv, "settings": json.loads(ds)}
        # The cloud's status of each order the report names, where the device's differs (an
        # order only in an event: always). Computed now, so a retry hears the current one.
        theirs: dict[str, str | None] = {e["order"]: None for e in r.order_events} | r.orders
        orders = {}
        if theirs:
            ours = {o: merchant.status(st, ship, deliver, now) for o, st, ship, deliver in
                    db.execute("SELECT id, status, ship_at, deliver_at FROM orders WHERE "
                               f"device=? AND id IN ({','.join('?' * len(theirs))})",
                               (dev, *theirs))}
            orders = {o: ours.get(o, "unknown") for o, st in theirs.items()
                      if ours.get(o, "unknown") != st}
        refill = dict(db.execute("SELECT item, cycle FROM refills WHERE device=?", (dev,)))
        # An update is offered while the device is in a rollout that runs and has none in
        # hand (a device with one reports its status in every report: no offer each time).
        update = self.releasing.update_offer(db, dev) if rolling and not r.in_hand else None
        return Reply(ack=r.event_ids, seq=last_seq, config=config, orders=orders,
                     refill=refill, duplicate=duplicate, update=update)
