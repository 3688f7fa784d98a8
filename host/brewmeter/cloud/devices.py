"""The ledger's database and its devices: opening it, transactions, provisioning and keys,
desired config, plans and closing months. A part of the Ledger (mixed in)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from brewmeter.cloud import auth, billing
from brewmeter.cloud.records import (
    NotForThisDevice,
    Part,
    StateConflict,
    UnknownDevice,
    _keys,
    check_desired,
    day_date,
    day_number,
)
from brewmeter.cloud.shared import protocol as P
from brewmeter.cloud.tables import (
    ADDED_COLUMNS,
    MAX_OVERLAP_S,
    SCHEMA,
)
from brewmeter.private import SQLITE_SIBLINGS, keep_private


class Devices(Part):

    # -- lifecycle ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT), not the
        # module's implicit ones. check_same_thread=False: the server calls from its worker
        # thread; the lock serializes every call.
        if self.path not in ("", ":memory:"):  # it holds the devices' keys in clear
            keep_private(Path(self.path), SQLITE_SIBLINGS)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=self.busy_timeout_s)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.executescript(SCHEMA)
        for table, col, decl in ADDED_COLUMNS:  # a ledger file from before they existed
            if col not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")
        self._keys = {row[0]: _keys(*row[1:]) for row in db.execute(
            "SELECT id, key, key_id, old_key, old_key_id, old_until FROM devices")}
        self._load_owners(db)
        return db

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def reopen(self) -> None:
        """Close and open the database again, as a cloud restart would."""
        if self.path == ":memory:":
            raise RuntimeError("an in-memory ledger cannot be reopened: use a file")
        with self._lock:
            self.db.close()
            self.db = self._open()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. If the body or the COMMIT fails, it is rolled back (a
        failed COMMIT leaves SQLite's transaction open) and the error raised: nothing stays."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")  # waits busy_timeout_s, then raises Busy
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    # -- provisioning and admin ----------------------------------------------------------------

    def add_device(self, device_id: str, key_hex: str, key_id: str | None = None,
                   overlap_s: int = 0) -> bool:
        """Register a device with its key, or replace the key of a known one (rotation): the
        key it had stays valid `overlap_s` seconds more, so devices still signing with it
        are heard until they have the new one. `key_id`: what the device sends in
        protocol.KEY_HEADER with this key (None: it sends none). Returns True if new."""
        auth.check_device_id(device_id)
        key = auth.parse_key(key_hex)
        if key_id is not None and not P.is_name(key_id):
            raise ValueError(f"bad key id {key_id!r} (1-{P.MAX_NAME} of {P.NAME_CHARS})")
        if type(overlap_s) is not int or not 0 <= overlap_s <= MAX_OVERLAP_S:
            raise ValueError(f"overlap_s: expected whole seconds in 0..{MAX_OVERLAP_S}")
        with self._tx() as db:
            old = db.execute("SELECT key, key_id FROM devices WHERE id=?",
                             (device_id,)).fetchone()
            if old is None:
                db.execute("INSERT INTO devices (id, key, key_id, created) VALUES (?, ?, ?, ?)",
                           (device_id, key.hex(), key_id, self.now()))
            elif old != (key.hex(), key_id):
                keep = overlap_s > 0
                db.execute("UPDATE devices SET key=?, key_id=?, old_key=?, old_key_id=?, "
                           "old_until=? WHERE id=?",
                           (key.hex(), key_id, old[0] if keep else None,
                            old[1] if keep else None,
                            self.now() + overlap_s if keep else None, device_id))
            row = db.execute("SELECT key, key_id, old_key, old_key_id, old_until FROM devices "
                             "WHERE id=?", (device_id,)).fetchone()
        self._keys = {**self._keys, device_id: _keys(*row)}  # swapped whole: lock-free readers
        return old is None

    def device_key(self, device_id: str) -> bytes | None:
        """The device's current key, or None if unknown (in memory: no database access)."""
        keys = self._keys.get(device_id)
        return keys[0][1] if keys else None

    def signing_keys(self, device_id: str, key_id: str | None) -> list[bytes]:
        """The keys a report signed under `key_id` (its KEY_HEADER, None if absent) may be
        signed with now: the current key, and the replaced one during its overlap."""
        now = self.now()
        return [k for kid, k, until in self._keys.get(device_id, ())
                if kid == key_id and (until is None or now < until)]

    def _need(self, db: sqlite3.Connection, device_id: str) -> None:
        if db.execute("SELECT 1 FROM devices WHERE id=?", (device_id,)).fetchone() is None:
            raise UnknownDevice(device_id)

    def set_config(self, device_id: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Set the desired settings; the version goes up by one. Returns {version, settings}.
        BadSettings (nothing changed) if no device would take them (see check_desired),
        NotForThisDevice if this one would not (a brew kind it does not have)."""
        with self._tx() as db:
            self._need(db, device_id)
            check_desired(settings)
            kinds = [f[len("brews."):] for (f,) in db.execute(
                "SELECT field FROM counters WHERE device=? AND field LIKE 'brews.%'",
                (device_id,))]
            reason = P.check_settings(settings, kinds) if kinds else None
            if reason is not None:
                raise NotForThisDevice(f"{reason} (its kinds: {', '.join(sorted(kinds))})")
            db.execute("UPDATE devices SET desired_version=desired_version+1, "
                       "desired_settings=? WHERE id=?", (json.dumps(settings), device_id))
            (v,) = db.execute("SELECT desired_version FROM devices WHERE id=?",
                              (device_id,)).fetchone()
        return {"version": v, "settings": settings}

    def set_plan(self, device_id: str, plan: dict[str, Any]) -> dict[str, Any]:
        """Set the device's pricing (see billing.parse_plan) from its `start` month on;
        returns the stored form. The first plan may start at any time (default: from the
        beginning); a later one starts this month or later (default: next month), so the
        past is never repriced (StateConflict otherwise), and replaces plans starting from
        then on. StateConflict for a plan in another currency than the first plan's."""
        stored = billing.parse_plan(plan)
        with self._tx() as db:
            self._need(db, device_id)
            plans = self._plans(db, device_id)
            if plans:
                today = datetime.fromtimestamp(self.now(), UTC).date()
                if stored["start"] is None:
                    stored["start"] = billing.next_month(today).isoformat()
                if stored["start"] < billing.month_start(today).isoformat():
                    raise StateConflict("a new plan starts this month or later: the months "
                                        "before are billed under the plan they had")
                if stored["currency"] != plans[0]["currency"]:  # a plan, not this device's
                    raise StateConflict(f"currency: the device is billed in "
                                        f"{plans[0]['currency']}")
                plans = [p for p in plans
                         if p.get("start") is None or p["start"] < stored["start"]]
            plans.append(stored)
            db.execute("UPDATE devices SET plan=?, plans=? WHERE id=?",
                       (json.dumps(stored), json.dumps(plans), device_id))
        return stored

    @staticmethod
    def _plans(db: sqlite3.Connection, dev: str) -> list[dict[str, Any]]:
        plans, plan = db.execute("SELECT plans, plan FROM devices WHERE id=?",
                                 (dev,)).fetchone()
        return json.loads(plans) if plans else [json.loads(plan)] if plan else []

    def _close(self, db: sqlite3.Connection, dev: str, now: float) -> None:
        """Close the months whose time has come (billing.CLOSE_DAYS after their end): keep
        their invoice lines as they are, before this report's usage lands."""
        upto = billing.closable(datetime.fromtimestamp(now, UTC).date())
        through, created = db.execute("SELECT closed_through, created FROM devices WHERE id=?",
                                      (dev,)).fetchone()
        if through is not None and through >= upto.isoformat():
            return
        plans = self._plans(db, dev)
        end = billing.next_month(upto) - timedelta(days=1)
        if plans:
            usage = self._usage(dev, 0, day_number(end))
            # From the device's first month (its registration, or earlier usage): every
            # month is closed, empty ones too, so any usage for it later is an adjustment.
            used = [n for n, u in usage.items() if u["brews"]]
            first = billing.next_month(date.fromisoformat(through)) if through else \
                billing.month_start(min([datetime.fromtimestamp(created, UTC).date()]
                                        + [day_date(n) for n in used[:1]]))
            if first <= upto:
                brews = {day_date(n): billing.DayBrews(u["brews"], u["estimated"])
                         for n, u in usage.items() if u["brews"]}
                lines = billing.invoice_plans(plans, brews, first, end)["months"]
                db.executemany("INSERT OR IGNORE INTO closed_months (device, month, line) "
                               "VALUES (?, ?, ?)",
                               [(dev, ln["month"], json.dumps(ln)) for ln in lines])
        db.execute("UPDATE devices SET closed_through=? WHERE id=?", (upto.isoformat(), dev))
