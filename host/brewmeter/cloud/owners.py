"""Who may see and steer which machine: owners (each with a token of their own, kept only as
its hash), the machines assigned to them, an owner's order rules (pause all ordering, the
settings the device already knows) sent through the config channel, and the audit log of
every change (who, what, when). A service over the ledger's database."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from brewmeter.cloud import audit
from brewmeter.cloud.db import Conn, Database
from brewmeter.cloud.devices import Devices, need
from brewmeter.cloud.errors import BadValue, UnknownOwner
from brewmeter.cloud.shared import ITEMS
from brewmeter.cloud.shared import protocol as P

SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    name TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS owner_devices (
    device TEXT PRIMARY KEY, owner TEXT NOT NULL);
-- Ordering paused by the owner: the orders_month the device had before (restored on resume).
CREATE TABLE IF NOT EXISTS paused (
    device TEXT PRIMARY KEY, orders_month INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, who TEXT NOT NULL,
    device TEXT, action TEXT NOT NULL, detail TEXT NOT NULL);
"""
OPERATOR = "operator"
# A revoked owner's token_hash: never a SHA-256 in hex, so no token matches it (and the column
# stays NOT NULL and UNIQUE, as in a ledger from before).
REVOKED = "revoked:"
# The settings an owner may set: the order rules the device applies (firmware app/orders.py).
RULES = ("lead_days", *("auto_" + i for i in ITEMS), "ask_first", "orders_month")


def token_hash(token: str) -> str:
    """What is stored of a token: its SHA-256 (tokens are 24 random bytes: no dictionary)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_owner_name(name: Any) -> str:
    if not P.is_name(name):
        raise BadValue(f"an owner's name: 1-{P.MAX_NAME} of letters, digits, _ and -")
    return name


def check_rules(rules: Any) -> dict[str, int]:
    """`rules` if every key is an order rule with a value the device takes; ValueError."""
    if not isinstance(rules, dict):
        raise BadValue("rules: expected an object")
    bad = sorted(k for k in rules if k not in RULES)
    if bad:
        raise BadValue(f"not an owner's rule: {', '.join(map(str, bad))} "
                       f"(rules: {', '.join(RULES)})")
    reason = P.check_settings(rules)
    if reason is not None:
        raise BadValue(reason)
    return rules


TOKENS = f"SELECT token_hash, name FROM owners WHERE token_hash NOT LIKE '{REVOKED}%'"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class Owners:
    """Owners, assignments and rules (see the module's docstring). On SQLite, which tokens
    are whose and which machine is whose are kept in memory too (swapped whole: lock-free
    readers); on PostgreSQL, which other processes write, they are read each time."""

    def __init__(self, db: Database, devices: Devices,
                 now: Callable[[], float] = time.time) -> None:
        self.db, self.devices, self.now = db, devices, now
        self._tokens: dict[str, str] = {}  # token hash -> owner
        self._owned: dict[str, str] = {}  # device -> owner
        self.load()

    def load(self) -> None:
        """Read the tokens and assignments again (after the database was reopened)."""
        if not self.db.shared:
            with self.db.read() as c:
                self._load_tokens(c)
                self._load_owned(c)

    def _load_tokens(self, c: Conn) -> None:
        if not self.db.shared:
            self._tokens = dict(c.execute(TOKENS))

    def _load_owned(self, c: Conn) -> None:
        if not self.db.shared:
            self._owned = dict(c.execute("SELECT device, owner FROM owner_devices"))

    def add_owner(self, name: str, who: str = OPERATOR) -> str:
        """Create owner `name`, or give them a new token (the old one stops working).
        Returns the token: only its hash is kept."""
        check_owner_name(name)
        token = secrets.token_urlsafe(24)
        h = token_hash(token)
        with self.db.tx() as db:
            db.execute("INSERT INTO owners (name, token_hash, created) VALUES (?, ?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET token_hash=excluded.token_hash",
                       (name, h, self.now()))
            audit.write(db, self.now(), who, None, "owner", f"token issued for owner {name}")
            self._load_tokens(db)
        return token

    def revoke_owner(self, name: str, who: str = OPERATOR) -> None:
        """Owner `name`'s token stops working (bearer and console sessions alike); their
        machines stay theirs, and add_owner gives them a new token. UnknownOwner."""
        with self.db.tx() as db:
            if db.execute("UPDATE owners SET token_hash=? WHERE name=?",
                          (REVOKED + name, name)).rowcount == 0:
                raise UnknownOwner(name)
            audit.write(db, self.now(), who, None, "owner", f"token revoked for owner {name}")
            self._load_tokens(db)

    def owner_of_token(self, token: str) -> str | None:
        return self.owner_of_token_hash(token_hash(token))

    def owner_of_token_hash(self, h: str) -> str | None:
        """The owner whose current token hashes to `h` (None after a new one, or a revoke)."""
        if not self.db.shared:
            return self._tokens.get(h)
        with self.db.lookup() as c:
            row = c.execute(TOKENS + " AND token_hash=?", (h,)).fetchone()
        return row and row[1]

    def owners(self) -> list[dict[str, Any]]:
        """Every owner: name, since when, whether their token is revoked, their machines."""
        with self.db.read() as c:
            rows = c.execute("SELECT name, created, token_hash FROM owners "
                             "ORDER BY name").fetchall()
            owned = dict(c.execute("SELECT owner, count(*) FROM owner_devices "
                                   "GROUP BY owner"))
        return [{"name": n, "since": _iso(t), "revoked": h.startswith(REVOKED),
                 "machines": owned.get(n, 0)} for n, t, h in rows]

    def owner_of(self, device_id: str) -> str | None:
        if not self.db.shared:
            return self._owned.get(device_id)
        with self.db.lookup() as c:
            row = c.execute("SELECT owner FROM owner_devices WHERE device=?",
                            (device_id,)).fetchone()
        return row and row[0]

    def assign(self, device_id: str, owner: str | None, who: str = OPERATOR) -> None:
        """Give the machine to `owner` (None: to no one). UnknownDevice, UnknownOwner."""
        with self.db.tx() as db:
            need(self.db, db, device_id)
            if owner is None:
                db.execute("DELETE FROM owner_devices WHERE device=?", (device_id,))
            else:
                if db.execute("SELECT 1 FROM owners WHERE name=?", (owner,)).fetchone() is None:
                    raise UnknownOwner(owner)
                db.execute("INSERT INTO owner_devices (device, owner) VALUES (?, ?) "
                           "ON CONFLICT (device) DO UPDATE SET owner=excluded.owner",
                           (device_id, owner))
            audit.write(db, self.now(), who, device_id, "assign", f"owner: {owner or '(none)'}")
            self._load_owned(db)

    def device_ids(self, who: str) -> list[str]:
        """The machines `who` may see: every one for the operator, an owner's own else."""
        with self.db.read() as c:
            if who == OPERATOR:
                return [d for (d,) in c.execute("SELECT id FROM devices ORDER BY id")]
            return [d for (d,) in c.execute(
                "SELECT device FROM owner_devices WHERE owner=? ORDER BY device",
                (who.removeprefix("owner:"),))]

    # -- the owner's rules -----------------------------------------------------------------

    def rules(self, device_id: str) -> dict[str, Any]:
        """The order rules as desired (defaults where unset) and whether ordering is paused."""
        with self.db.read() as c:
            return self._rules(c, device_id)

    @staticmethod
    def _rules(c: Conn, device_id: str) -> dict[str, Any]:
        row = c.execute("SELECT desired_settings FROM devices WHERE id=?",
                        (device_id,)).fetchone()
        paused = c.execute("SELECT orders_month FROM paused WHERE device=?",
                           (device_id,)).fetchone()
        settings = json.loads(row[0]) if row else {}
        out = {k: P.setting(settings, k) for k in RULES}
        if paused is not None:
            out["orders_month"] = paused[0]  # what it goes back to
        return {"paused": paused is not None, "rules": out}

    def set_rules(self, device_id: str, rules: dict[str, int] | None = None,
                  paused: bool | None = None, who: str = OPERATOR) -> dict[str, Any]:
        """Change the order rules and/or pause (orders_month 0 on the device, so it orders
        nothing, and the cloud declines anything it still sends) or resume all ordering.
        The desired config gets a new version: the device applies it after its next sync.
        Returns rules(). ValueError for a rule the device would not take."""
        check_rules(rules or {})
        with self.db.tx() as db:  # one change, read and written in one transaction
            need(self.db, db, device_id)
            cur = self._rules(db, device_id)
            row = db.execute("SELECT desired_settings FROM devices WHERE id=?",
                             (device_id,)).fetchone()
            settings = {**json.loads(row[0]), **(rules or {})}
            now_paused = cur["paused"] if paused is None else paused
            back = (rules or {}).get("orders_month", cur["rules"]["orders_month"])
            if now_paused:
                settings["orders_month"] = 0
            elif cur["paused"]:
                settings["orders_month"] = back
            self.devices.set_config_in(db, device_id, settings)
            if now_paused:
                db.execute("INSERT INTO paused (device, orders_month) VALUES (?, ?) ON "
                           "CONFLICT (device) DO UPDATE SET orders_month=excluded.orders_month",
                           (device_id, back))
            else:
                db.execute("DELETE FROM paused WHERE device=?", (device_id,))
            what = []
            if paused is not None and paused != cur["paused"]:
                what.append("ordering paused" if paused else "ordering resumed")
            what += [f"{k}={v}" for k, v in sorted((rules or {}).items())
                     if cur["rules"][k] != v]
            audit.write(db, self.now(), who, device_id, "rules", ", ".join(what) or "no change")
            return self._rules(db, device_id)
