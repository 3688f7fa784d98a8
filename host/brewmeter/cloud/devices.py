"""The devices: provisioning and keys, desired config and plans. A service over the
ledger's database (db.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from brewmeter.cloud import auth, billing
from brewmeter.cloud.db import Conn, Database
from brewmeter.cloud.errors import (
    BadValue,
    NotForThisDevice,
    StateConflict,
    UnknownDevice,
)
from brewmeter.cloud.records import _keys, check_desired
from brewmeter.cloud.shared import protocol as P
from brewmeter.cloud.tables import MAX_OVERLAP_S, Keys

KEY_COLS = "key, key_id, old_key, old_key_id, old_until"


def need(db: Database, c: Conn, device_id: str) -> None:
    """UnknownDevice unless the device exists; in a transaction on PostgreSQL, its row is
    locked till the end: every write to a device's rows is serial across processes."""
    if c.execute("SELECT 1 FROM devices WHERE id=?" + db.dialect.for_update,
                 (device_id,)).fetchone() is None:
        raise UnknownDevice(device_id)


def plans(c: Conn, dev: str) -> list[dict[str, Any]]:
    """The device's plan history (see set_plan)."""
    got, plan = c.execute("SELECT plans, plan FROM devices WHERE id=?", (dev,)).fetchone()
    return json.loads(got) if got else [json.loads(plan)] if plan else []


class Devices:
    """Provisioning, keys, desired config and plans. The keys are cached in memory on SQLite
    (one process writes the file); read from the database on PostgreSQL, which other
    processes write too."""

    def __init__(self, db: Database, now: Callable[[], float] = time.time) -> None:
        self.db, self.now = db, now
        self._keys: dict[str, Keys] = {}
        self.load()

    def load(self) -> None:
        """Read the keys again (after the database was reopened)."""
        if not self.db.shared:
            with self.db.read() as c:
                self._keys = {row[0]: _keys(*row[1:]) for row in c.execute(
                    f"SELECT id, {KEY_COLS} FROM devices")}

    def keys(self, device_id: str) -> Keys:
        if not self.db.shared:
            return self._keys.get(device_id, ())
        with self.db.lookup() as c:
            row = c.execute(f"SELECT {KEY_COLS} FROM devices WHERE id=?",
                            (device_id,)).fetchone()
        return _keys(*row) if row else ()

    # -- provisioning and admin ----------------------------------------------------------------

    def add_device(self, device_id: str, key_hex: str, key_id: str | None = None,
                   overlap_s: int = 0) -> bool:
        """Register a device with its key, or replace the key of a known one (rotation): the
        key it had stays valid `overlap_s` seconds more, so devices still signing with it
        are heard until they have the new one. `key_id`: what the device sends in
        protocol.KEY_HEADER with this key (None: it sends none). Returns True if new."""
        try:
            auth.check_device_id(device_id)
            key = auth.parse_key(key_hex)
        except ValueError as e:
            raise BadValue(str(e)) from None
        if key_id is not None and not P.is_name(key_id):
            raise BadValue(f"bad key id {key_id!r} (1-{P.MAX_NAME} of {P.NAME_CHARS})")
        if type(overlap_s) is not int or not 0 <= overlap_s <= MAX_OVERLAP_S:
            raise BadValue(f"overlap_s: expected whole seconds in 0..{MAX_OVERLAP_S}")
        with self.db.tx() as db:
            locked = "SELECT key, key_id FROM devices WHERE id=?" + self.db.dialect.for_update
            old = db.execute(locked, (device_id,)).fetchone()
            if old is None and db.execute(
                    "INSERT INTO devices (id, key, key_id, created) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    (device_id, key.hex(), key_id, self.now())).rowcount == 0:
                old = db.execute(locked, (device_id,)).fetchone()  # another process's, just now
            if old is not None and tuple(old) != (key.hex(), key_id):
                keep = overlap_s > 0
                db.execute("UPDATE devices SET key=?, key_id=?, old_key=?, old_key_id=?, "
                           "old_until=? WHERE id=?",
                           (key.hex(), key_id, old[0] if keep else None,
                            old[1] if keep else None,
                            self.now() + overlap_s if keep else None, device_id))
            row = db.execute(f"SELECT {KEY_COLS} FROM devices WHERE id=?",
                             (device_id,)).fetchone()
        if not self.db.shared:  # swapped whole: lock-free readers
            self._keys = {**self._keys, device_id: _keys(*row)}
        return old is None

    def device_key(self, device_id: str) -> bytes | None:
        """The device's current key, or None if unknown (on SQLite: from memory)."""
        keys = self.keys(device_id)
        return keys[0][1] if keys else None

    def signing_keys(self, device_id: str, key_id: str | None) -> list[bytes]:
        """The keys a report signed under `key_id` (its KEY_HEADER, None if absent) may be
        signed with now: the current key, and the replaced one during its overlap."""
        now = self.now()
        return [k for kid, k, until in self.keys(device_id)
                if kid == key_id and (until is None or now < until)]

    def set_config(self, device_id: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Set the desired settings; the version goes up by one. Returns {version, settings}.
        BadSettings (nothing changed) if no device would take them (see check_desired),
        NotForThisDevice if this one would not (a brew kind it does not have)."""
        with self.db.tx() as c:
            return self.set_config_in(c, device_id, settings)

    def set_config_in(self, db: Conn, device_id: str, settings: dict[str, Any]
                      ) -> dict[str, Any]:
        """set_config within the transaction `db`."""
        need(self.db, db, device_id)
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
        with self.db.tx() as db:
            need(self.db, db, device_id)
            had = plans(db, device_id)
            if had:
                today = datetime.fromtimestamp(self.now(), UTC).date()
                if stored["start"] is None:
                    stored["start"] = billing.next_month(today).isoformat()
                if stored["start"] < billing.month_start(today).isoformat():
                    raise StateConflict("a new plan starts this month or later: the months "
                                        "before are billed under the plan they had")
                if stored["currency"] != had[0]["currency"]:  # a plan, not this device's
                    raise StateConflict(f"currency: the device is billed in "
                                        f"{had[0]['currency']}")
                had = [p for p in had
                       if p.get("start") is None or p["start"] < stored["start"]]
            had.append(stored)
            db.execute("UPDATE devices SET plan=?, plans=? WHERE id=?",
                       (json.dumps(stored), json.dumps(had), device_id))
        return stored
