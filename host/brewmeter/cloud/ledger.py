"""The cloud's ledger: SQLite (WAL). Every report is applied in one transaction, and reports
that arrive together share one commit (`apply_batch`, each inside its own savepoint): a crash
or an error mid-report leaves none of it behind, and a report is durable (synchronous=FULL:
the WAL is fsynced at each commit) before the cloud acknowledges it.

Merging follows the sync model: lifetime counters and usage buckets keep the maximum seen,
events are stored once per (device, id), and only the newest report (highest seq) speaks for
the device's current state (firmware, boot, config); consumables' levels keep, per field, the
newest report's value. The cloud is also the merchant of the device's replenishment orders
(see merchant.py): deduped by (device, order id). Thread-safe: one lock around each call."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from brewmeter.cloud import auth, billing, merchant
from brewmeter.cloud.merchant import Merchant
from brewmeter.cloud.owners import Owners
from brewmeter.cloud.report import Report, parse_report, unflatten
from brewmeter.cloud.shared import protocol as P

DAY_MS = 86_400_000
# The cloud keeps the body hash of a device's last SEQ_KEEP seqs; below that floor a seq can
# no longer be told a retry from a replay, so it is refused (409, like a replay). Safe: a
# device's later report carries the same cumulative counters, buckets and unacked events.
SEQ_KEEP = 1024
EPOCH = date(1970, 1, 1)

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    created REAL NOT NULL,
    last_seq INTEGER,            -- highest seq accepted
    last_seen REAL,              -- server time of the last accepted report
    reports INTEGER NOT NULL DEFAULT 0,
    fw TEXT, boot INTEGER, uptime_ms INTEGER, clock INTEGER,   -- from the newest report
    max_boot INTEGER NOT NULL DEFAULT 0,
    desired_version INTEGER NOT NULL DEFAULT 0,
    desired_settings TEXT NOT NULL DEFAULT '{}',
    applied_version INTEGER,
    rejected_version INTEGER,
    rejected_reason TEXT,
    plan TEXT,
    conflict_seq INTEGER         -- the highest seq when a report last got 409 (lost state?)
);
-- One row per accepted (device, seq): the body's hash tells a retry from a replay.
CREATE TABLE IF NOT EXISTS reports (
    device TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (device, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    device TEXT NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (device, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flags (
    device TEXT NOT NULL, kind TEXT NOT NULL, field TEXT NOT NULL,
    count INTEGER NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    detail TEXT NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL,
    PRIMARY KEY (device, kind, field)) WITHOUT ROWID;
-- Dated buckets: usage during `day` (days since 1970-01-01 UTC), max per field.
CREATE TABLE IF NOT EXISTS day_usage (
    device TEXT NOT NULL, day INTEGER NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (device, day, field)) WITHOUT ROWID;
-- Buckets made while the device's clock was unknown, keyed by (boot, at_ms), max per field,
-- and where each was placed: exactly once its boot's clock is known, else estimated.
CREATE TABLE IF NOT EXISTS loose_usage (
    device TEXT NOT NULL, boot INTEGER NOT NULL, at_ms INTEGER NOT NULL, field TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (device, boot, at_ms, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS loose_place (
    device TEXT NOT NULL, boot INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    arrived_day INTEGER NOT NULL, day INTEGER, estimated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device, boot, at_ms)) WITHOUT ROWID;
-- Buckets the device folded together (history older than it could keep apart), keyed by its
-- fold id, max per field; placed on the newest day in them (else the day they arrived),
-- always estimated.
CREATE TABLE IF NOT EXISTS fold_usage (
    device TEXT NOT NULL, fold INTEGER NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (device, fold, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fold_place (
    device TEXT NOT NULL, fold INTEGER NOT NULL, day INTEGER NOT NULL,
    PRIMARY KEY (device, fold)) WITHOUT ROWID;
-- Brews the lifetime counters hold but no bucket does (history the device lost, a bucket
-- dated too far ahead): estimated, on the (cloud's) day the gap was first seen, so invoices
-- stay complete; taken back, newest first, as buckets that explain them arrive.
CREATE TABLE IF NOT EXISTS gap_usage (
    device TEXT NOT NULL, day INTEGER NOT NULL, brews INTEGER NOT NULL,
    PRIMARY KEY (device, day)) WITHOUT ROWID;
-- Unix time in ms at which a boot began, from its first report carrying a clock.
CREATE TABLE IF NOT EXISTS boot_anchor (
    device TEXT NOT NULL, boot INTEGER NOT NULL, epoch_ms INTEGER NOT NULL,
    PRIMARY KEY (device, boot)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    device TEXT NOT NULL, id INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
    seq INTEGER NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (device, id)) WITHOUT ROWID;
-- Replenishment orders, one per (device, order id). status: needs_approval, placed or declined;
-- shipping and delivery times are fixed when the order is placed.
CREATE TABLE IF NOT EXISTS orders (
    device TEXT NOT NULL, id TEXT NOT NULL, item TEXT NOT NULL, cycle INTEGER NOT NULL,
    ask INTEGER NOT NULL, status TEXT NOT NULL, requested_at REAL NOT NULL, placed_at REAL,
    declined_at REAL, ship_at REAL, deliver_at REAL,
    reason TEXT,                 -- why the cloud declined it (the owner's rules, the catalogue)
    PRIMARY KEY (device, id)) WITHOUT ROWID;
-- Consumables' levels (field: cycle, pct or days), each from the newest report that carried it.
CREATE TABLE IF NOT EXISTS supplies (
    device TEXT NOT NULL, item TEXT NOT NULL, field TEXT NOT NULL, value INTEGER,
    seq INTEGER NOT NULL,
    PRIMARY KEY (device, item, field)) WITHOUT ROWID;
-- The owner said the item was refilled during `cycle`: replies carry it until the supplies
-- show a later cycle.
-- Invoice lines of closed months (billing.CLOSE_DAYS after their end), as they were then:
-- usage that arrives later for such a month is billed as an adjustment line.
CREATE TABLE IF NOT EXISTS closed_months (
    device TEXT NOT NULL, month TEXT NOT NULL, line TEXT NOT NULL,
    PRIMARY KEY (device, month)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refills (
    device TEXT NOT NULL, item TEXT NOT NULL, cycle INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (device, item)) WITHOUT ROWID;
"""
# Columns added since the first ledger files were written: (table, column, declaration).
ADDED_COLUMNS = (("devices", "conflict_seq", "INTEGER"), ("orders", "reason", "TEXT"),
                 ("devices", "key_id", "TEXT"), ("devices", "old_key", "TEXT"),
                 ("devices", "old_key_id", "TEXT"), ("devices", "old_until", "REAL"),
                 ("devices", "plans", "TEXT"), ("devices", "closed_through", "TEXT"))
# A device's keys: (key id or None, key, accepted until (None: for good)), current first.
Keys = tuple[tuple[str | None, bytes, float | None], ...]
MAX_OVERLAP_S = 90 * 86400  # the longest a replaced key stays valid
ORDER_COLS = ("id, item, cycle, ask, status, requested_at, placed_at, declined_at, ship_at, "
              "deliver_at, reason")


# Counter-name prefix -> the counter whose growth restarts them (see _counters).
CYCLE_SCOPED = {"filter_": "filters"}


def _without(r: Report, fields: set[str]) -> Report:
    return replace(r, counters={f: v for f, v in r.counters.items() if f not in fields})


class UnknownDevice(LookupError):
    pass


class UnknownOrder(LookupError):
    pass


def _keys(key: str, key_id: str | None, old: str | None, old_id: str | None,
          until: float | None) -> Keys:
    cur = ((key_id, bytes.fromhex(key), None),)
    return cur + ((old_id, bytes.fromhex(old), until),) if old else cur


def is_busy(e: BaseException) -> bool:
    """Whether `e` is SQLite saying the database is locked by someone else (try later)."""
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(e, sqlite3.OperationalError) and code is not None and (
        code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED))


class StateConflict(Exception):
    """The request does not fit the order's or the item's state (HTTP 409)."""


class SeqConflict(Exception):
    """A seq already accepted with a different body, or one so far below the highest that
    its hash is pruned (HTTP 409): the reply's `seq` is the highest accepted."""

    def __init__(self, seq: int, highest: int, pruned: bool = False) -> None:
        super().__init__(
            f"seq {seq} is more than {SEQ_KEEP} below the highest accepted ({highest}): "
            "continue above it" if pruned else
            f"seq {seq} was already accepted with a different body")
        self.seq, self.highest = seq, highest


@dataclass(slots=True)
class Reply:
    ack: list[int]
    seq: int
    config: dict[str, Any] | None
    orders: dict[str, str] = field(default_factory=dict)  # order id -> the cloud's status
    refill: dict[str, int] = field(default_factory=dict)  # item -> cycle the owner refilled
    duplicate: bool = False  # an idempotent retry: nothing was applied

    def json(self, limit: int = P.MAX_REPLY) -> dict[str, Any]:
        """The reply's JSON, encoded (compact) in at most `limit` bytes: `ack`, `seq` and
        `config` always (bounded by the protocol's limits and by set_config); then as many
        orders and refills as fit. The rest follow in later replies: the device names its
        open orders again, and a refill is sent until the device shows a later cycle."""
        out: dict[str, Any] = {"ack": self.ack, "seq": self.seq, "config": self.config}
        if self.orders:
            out["orders"] = self.orders
        if self.refill:
            out["refill"] = self.refill
        if len(_compact(out)) <= limit:
            return out
        out = {"ack": self.ack, "seq": self.seq, "config": self.config}
        for key, entries in (("orders", self.orders), ("refill", self.refill)):
            part: dict[str, Any] = {}
            for k, v in sorted(entries.items()):
                part[k] = v
                if len(_compact({**out, key: part})) > limit:
                    del part[k]
                    break
            if part:
                out[key] = part
        return out

    def encode(self, limit: int = P.MAX_REPLY) -> bytes:
        return _compact(self.json(limit))


def _compact(d: Any) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


# The most `ack` and `seq` take in a reply (every event id and the seq at their longest), so
# desired settings get the rest of the device's reply limit, less room for the keys.
ACK_MAX = len(_compact({"ack": [P.MAX_INT] * P.MAX_EVENTS, "seq": P.MAX_INT, "config": None}))
CONFIG_MAX = P.MAX_REPLY - ACK_MAX - 64


class BadSettings(ValueError):
    """Desired settings no device would take, or one could not receive (HTTP 400)."""


class NotForThisDevice(BadSettings):
    """Desired settings valid for some device but not this one: a per-kind setting naming
    a brew kind it does not have (HTTP 409)."""


def check_desired(settings: Any) -> dict[str, Any]:
    """`settings` if a device can take them: the protocol's schema, and a reply that fits
    the device's limit whatever else it carries. Else BadSettings with the reason. (Which
    brew kinds a per-kind setting may name depends on the device: see set_config.)"""
    reason = P.check_settings(settings)
    if reason is None and len(_compact({"version": P.MAX_INT, "settings": settings})) > \
            CONFIG_MAX:
        reason = f"settings over {CONFIG_MAX} bytes: no reply could carry them"
    if reason is not None:
        raise BadSettings(reason)
    return settings


def _brews(fields: dict[str, int]) -> int:
    """A bucket's brews: by kind when it has them, else its total (the firmware sends only
    the day's total: brews by kind per day would cost flash on every brew)."""
    by_kind = [v for f, v in fields.items() if f.startswith("brews.")]
    return sum(by_kind) if by_kind else fields.get("brews_total", 0)


def day_number(d: date) -> int:
    return (d - EPOCH).days


def day_date(n: int) -> date:
    return date.fromordinal(EPOCH.toordinal() + n)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _order(row: tuple[Any, ...], now: float) -> dict[str, Any]:
    """An orders row (ORDER_COLS) as the query API shows it at `now`."""
    oid, item, cycle, ask, st, requested, placed, declined, ship, deliver, reason = row
    return {"order": oid, "item": item, "cycle": cycle, "reason": reason,
            "status": merchant.status(st, ship, deliver, now), "ask": bool(ask),
            "requested_at": _iso(requested), "placed_at": _iso(placed),
            "shipped_at": _iso(ship) if st == "placed" and ship <= now else None,
            "delivered_at": _iso(deliver) if st == "placed" and deliver <= now else None,
            "declined_at": _iso(declined)}


class Ledger(Owners):
    def __init__(self, path: str | Path = ":memory:", *, synchronous: str = "FULL",
                 now: Callable[[], float] = time.time, merchant: Merchant | None = None,
                 busy_timeout_s: float = 1.0) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous: FULL, NORMAL or EXTRA")
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.now = now
        # How long a write waits for a database another process holds, before it gives up
        # (the server then answers 503 with Retry-After: the device tries again later).
        self.busy_timeout_s = busy_timeout_s
        self.merchant = merchant or Merchant()
        self._lock = threading.RLock()
        self._keys: dict[str, Keys] = {}
        self.db = self._open()

    # -- lifecycle ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT), not the
        # module's implicit ones. check_same_thread=False: the server calls from its worker
        # thread; the lock serializes every call.
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
        then on. BadPlan for a plan in another currency."""
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
                if stored["currency"] != plans[0]["currency"]:
                    raise billing.BadPlan(f"currency: the device is billed in "
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
        with self._tx() as db:
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

    def _apply(self, db: sqlite3.Connection, dev: str, r: Report, now: float) -> Reply:
        row = db.execute("SELECT last_seq, max_boot, desired_version, desired_settings, "
                         "applied_version, rejected_version, conflict_seq, "
                         "(SELECT digest FROM reports WHERE device=id AND seq=?) "
                         "FROM devices WHERE id=?", (r.seq, dev)).fetchone()
        if row is None:
            raise UnknownDevice(dev)
        last_seq, max_boot, dv, ds, applied, rejected, conflict_seq, prev = row
        if prev is not None:
            if prev != r.digest:
                raise SeqConflict(r.seq, last_seq)
            return self._reply(db, dev, r, now, last_seq, dv, ds, applied, rejected,
                               duplicate=True)
        if last_seq is not None and r.seq <= last_seq - SEQ_KEEP:
            raise SeqConflict(r.seq, last_seq, pruned=True)
        if conflict_seq is not None and r.seq <= conflict_seq:
            # After a 409 the device should go on above the reply's seq: one that goes on
            # below it (it lost its state and ignores the reply) is taken as sending old
            # reports, so its current state would not show. Flagged for the operator.
            self._flag(db, dev, "seq_backwards", "seq", r.seq, now,
                       {"conflict_seq": conflict_seq, "reported": r.seq})
        self._close(db, dev, now)  # what arrives from now on is late for closed months
        db.execute("INSERT INTO reports (device, seq, digest, received) VALUES (?, ?, ?, ?)",
                   (dev, r.seq, r.digest, now))
        newest = last_seq is None or r.seq > last_seq
        if newest:  # prune the hashes below the floor
            db.execute("DELETE FROM reports WHERE device=? AND seq<=?", (dev, r.seq - SEQ_KEEP))
        self._counters(db, dev, r, newest, now)
        self._days(db, dev, r, max_boot, now)
        self._events(db, dev, r, now)
        self._new_orders(db, dev, r, now, ds)
        self._supplies(db, dev, r)
        if newest or r.days:
            self._reconcile(db, dev, int(now // 86400))
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
        return self._reply(db, dev, r, now, last_seq, dv, ds, applied, rejected)

    def _counters(self, db: sqlite3.Connection, dev: str, r: Report, newest: bool,
                  now: float) -> None:
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
                       "ON CONFLICT DO UPDATE SET value=excluded.value", up)
        if not newest:
            return  # an older report arriving late is expected to carry lower values
        for f, v in r.counters.items():
            if f not in fresh and v < stored.get(f, v):  # went down: a replaced flash?
                self._flag(db, dev, "counter_regression", f, r.seq, now,
                           {"stored": stored[f], "reported": v})

    def _flag(self, db: sqlite3.Connection, dev: str, kind: str, fld: str, seq: int,
              now: float, detail: dict[str, Any]) -> None:
        db.execute("INSERT INTO flags (device, kind, field, count, first_seq, last_seq, detail, "
                   "first_at, last_at) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?) "
                   "ON CONFLICT DO UPDATE SET count=count+1, last_seq=excluded.last_seq, "
                   "detail=excluded.detail, last_at=excluded.last_at",
                   (dev, kind, fld, seq, seq, json.dumps(detail), now, now))

    def _days(self, db: sqlite3.Connection, dev: str, r: Report, max_boot: int,
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
        db.executemany("INSERT INTO day_usage (device, day, field, value) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT DO UPDATE SET value=max(value, excluded.value)", dated)
        folds = [b for b in r.days if b.fold is not None]
        if folds:
            db.executemany("INSERT INTO fold_place (device, fold, day) VALUES (?, ?, ?) "
                           "ON CONFLICT DO NOTHING",
                           [(dev, b.fold, b.day if b.day and b.day <= ahead else today)
                            for b in folds])
            db.executemany("INSERT INTO fold_usage (device, fold, field, value) "
                           "VALUES (?, ?, ?, ?) "
                           "ON CONFLICT DO UPDATE SET value=max(value, excluded.value)",
                           [(dev, b.fold, f, v) for b in folds for f, v in b.fields.items()])
        loose = [b for b in r.days if b.fold is None and b.day is None]
        if loose:
            db.executemany("INSERT INTO loose_place (device, boot, at_ms, arrived_day) "
                           "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           [(dev, b.boot, b.at_ms, today) for b in loose])
            db.executemany("INSERT INTO loose_usage (device, boot, at_ms, field, value) "
                           "VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT DO UPDATE SET value=max(value, excluded.value)",
                           [(dev, b.boot, b.at_ms, f, v) for b in loose
                            for f, v in b.fields.items()])
        anchored = False
        # The boot's start in unix ms; the first report with a clock fixes it (not a clock
        # more than DAY_AHEAD days ahead of the cloud's: that would bill into the future).
        if r.clock and r.clock // 86400 <= ahead:
            anchored = db.execute(
                "INSERT INTO boot_anchor (device, boot, epoch_ms) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING", (dev, r.boot, r.clock * 1000 - r.uptime_ms)
            ).rowcount > 0
        # Place exactly what an anchored boot explains (also correcting earlier estimates, if
        # the report with the clock came late), then estimate what a newer boot orphaned.
        # Only when something could move: most reports skip both.
        if loose or anchored:  # (never further ahead than a dated bucket may be)
            db.execute("UPDATE loose_place SET day=(a.epoch_ms + loose_place.at_ms) / ?1, "
                       "estimated=0 FROM boot_anchor a WHERE loose_place.device=?2 "
                       "AND a.device=loose_place.device AND a.boot=loose_place.boot "
                       "AND (day IS NULL OR estimated=1) "
                       "AND (a.epoch_ms + loose_place.at_ms) / ?1 <= ?3", (DAY_MS, dev, ahead))
        if loose or r.boot > max_boot:
            db.execute("UPDATE loose_place SET day=arrived_day, estimated=1 "
                       "WHERE device=? AND day IS NULL AND boot < ?",
                       (dev, max(max_boot, r.boot)))

    def _reconcile(self, db: sqlite3.Connection, dev: str, today: int) -> None:
        """Lifetime brews against the buckets: brews in none get an estimated bucket (on
        `today`, the cloud's day the gap is first seen), so invoices stay complete; buckets
        that arrive later (the device pages its history) take them back, newest first."""
        lifetime = _brews(dict(db.execute(
            "SELECT field, value FROM counters WHERE device=? AND (field='brews_total' OR "
            "field LIKE 'brews.%')", (dev,))))
        bucketed = 0
        for table, key in (("day_usage", "day"), ("loose_usage", "boot, at_ms"),
                           ("fold_usage", "fold")):
            (n,) = db.execute(
                f"SELECT sum(b) FROM (SELECT coalesce(sum(CASE WHEN field LIKE 'brews.%' "
                f"THEN value END), max(CASE WHEN field='brews_total' THEN value END), 0) AS b "
                f"FROM {table} WHERE device=? GROUP BY {key})", (dev,)).fetchone()
            bucketed += n or 0
        gap = max(0, lifetime - bucketed)
        rows = db.execute("SELECT day, brews FROM gap_usage WHERE device=? ORDER BY day DESC",
                          (dev,)).fetchall()
        have = sum(n for _, n in rows)
        if gap > have:
            db.execute("INSERT INTO gap_usage (device, day, brews) VALUES (?, ?, ?) "
                       "ON CONFLICT DO UPDATE SET brews=brews+excluded.brews",
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

    def _events(self, db: sqlite3.Connection, dev: str, r: Report, now: float) -> None:
        for ev in r.events:
            body = json.dumps(ev, sort_keys=True, separators=(",", ":"))
            cur = db.execute("INSERT INTO events (device, id, kind, body, seq, received) "
                             "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                             (dev, ev["id"], ev["kind"], body, r.seq, now))
            if cur.rowcount == 0:
                (old,) = db.execute("SELECT body FROM events WHERE device=? AND id=?",
                                    (dev, ev["id"])).fetchone()
                if old != body:  # an id reused for another event (a device that lost state)
                    self._flag(db, dev, "event_conflict", str(ev["id"]), r.seq, now,
                               {"stored": json.loads(old), "reported": ev})

    def _new_orders(self, db: sqlite3.Connection, dev: str, r: Report, now: float,
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

    def _supplies(self, db: sqlite3.Connection, dev: str, r: Report) -> None:
        if not r.supplies:
            return
        db.executemany("INSERT INTO supplies (device, item, field, value, seq) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET value=excluded.value, "
                       "seq=excluded.seq WHERE excluded.seq > supplies.seq",
                       [(dev, item, f, v, r.seq) for item, fields in r.supplies.items()
                        for f, v in fields.items()])
        # A refill the owner announced is done once the device shows a later cycle.
        db.executemany("DELETE FROM refills WHERE device=? AND item=? AND cycle < ?",
                       [(dev, item, fields["cycle"]) for item, fields in r.supplies.items()
                        if fields.get("cycle") is not None])

    def _reply(self, db: sqlite3.Connection, dev: str, r: Report, now: float, last_seq: int,
               dv: int, ds: str, applied: int | None, rejected: int | None,
               duplicate: bool = False) -> Reply:
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
        return Reply(ack=r.event_ids, seq=last_seq, config=config, orders=orders,
                     refill=refill, duplicate=duplicate)

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
