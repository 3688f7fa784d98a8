"""The ledger's SQLite schema and the constants its parts share."""

from __future__ import annotations

from datetime import date

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
