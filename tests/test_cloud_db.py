"""The cloud's database layer (brewmeter.cloud.db, migrations): numbered migrations the same
on SQLite and PostgreSQL, a ledger file written before versions converted in place, a
newer schema refused; and on PostgreSQL, exactly-once from the database when several
processes write at once."""

from __future__ import annotations

import re
import sqlite3
from datetime import date
from pathlib import Path

import pytest
from brewmeter.cloud import Ledger, auth
from brewmeter.cloud.db import PostgresDatabase, SqliteDatabase, is_url
from brewmeter.cloud.migrations import MIGRATIONS, SchemaTooNew, version

# A ledger file as the cloud wrote it before its schema was versioned (SQLite's .dump of
# one made by that code: a device with a plan, a report, an owner, rules, the audit log).
UNVERSIONED = Path(__file__).with_name("ledger_unversioned.sql")
OLD_DEV, OLD_T = "bm-old01", 1_773_000_000.0


def _unversioned(path: Path) -> list[str]:
    sql = UNVERSIONED.read_text()
    with sqlite3.connect(path) as db:
        db.executescript(sql)
    db.close()
    return _dump(path)


def _dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_a_ledger_from_before_versions_is_migrated_in_place(tmp_path):
    db = tmp_path / "ledger.db"
    before = _unversioned(db)
    ledger = Ledger(db, now=lambda: OLD_T)
    assert version(ledger.db) == len(MIGRATIONS) == 3
    # Every table and row as it was; only schema_version and the later migrations' tables
    # (2: releases and rollouts; 3: an index of a rollout's machines) are new.
    new = ("schema_version", "releases", "rollouts", "rollout_machines", "update_status",
           "rollout_machines_device")
    table = re.compile(r'(?:CREATE TABLE|CREATE INDEX|INSERT INTO) "?(\w+)')
    assert [x for x in _dump(db) if not ((m := table.match(x)) and m[1] in new)] == before
    assert ledger.device(OLD_DEV)["counters"]["brews_total"] == 7
    assert ledger.invoice(OLD_DEV, date(2026, 3, 1), date(2026, 3, 31))["total_cents"] == 7 * 35
    assert ledger.owner_of(OLD_DEV) == "alice" and ledger.rules(OLD_DEV)["paused"]
    assert [e["action"] for e in ledger.audit_log(OLD_DEV)] == ["rules", "assign"]
    # It goes on: the device's next report merges onto what the old cloud stored.
    report = {"seq": 8, "fw": "0.1.0", "boot": 2, "uptime_ms": 9000, "clock": 0,
              "counters": {"brews": {"espresso": 6, "lungo": 2}, "brews_total": 8},
              "days": [], "events": [{"id": 1, "kind": "service", "at": 3}],
              "config": {"applied": 0}}
    assert ledger.apply_report(OLD_DEV, auth.encode_report(report)).ack == [1]
    assert ledger.events(OLD_DEV) and len(ledger.events(OLD_DEV) or []) == 1
    ledger.close()
    again = Ledger(db)  # migrated once: opening it again applies nothing
    assert version(again.db) == 3
    (n,) = again.db.execute("SELECT count(*) FROM schema_version").fetchone()
    assert n == 3 and again.device(OLD_DEV)["counters"]["brews_total"] == 8
    again.close()


def test_a_ledger_from_a_newer_cloud_is_refused_unchanged(ledger_at):
    ledger = Ledger(ledger_at)
    ledger.db.execute("INSERT INTO schema_version (version, applied) VALUES (99, 0)")
    before = ledger.dump()
    ledger.close()
    with pytest.raises(SchemaTooNew, match="version 99, this cloud knows up to 3"):
        Ledger(ledger_at)
    # Read without migrating: the raw database.
    raw = PostgresDatabase(str(ledger_at)) if is_url(ledger_at) else SqliteDatabase(ledger_at)
    assert raw.dump() == before
    raw.close()


def test_migrations_make_the_same_tables_on_both_engines(ledger_at, tmp_path):
    ledger = Ledger(ledger_at)
    reference = Ledger(tmp_path / "reference.db")
    with ledger.db.read() as c, reference.db.read() as r:
        assert ledger.db.tables(c) == reference.db.tables(r)
        for t in reference.db.tables(r):
            assert ledger.db.columns(c, t) == reference.db.columns(r, t), t
    ledger.close()
    reference.close()


# -- exactly once, from the database: several writers race the same reports ----------------------

RACE_T = 1_773_000_000.0
RACE_DAY = int(RACE_T // 86400)


def _race_report(seq: int) -> bytes:
    """A device's seq-th report: cumulative counters, today's bucket, an event, and from the
    3rd on an order for coffee's cycle 3 under a new event id (as after a reboot)."""
    events: list[dict] = [{"id": seq, "kind": "service", "at": seq}]
    if seq >= 3:
        events.append({"id": 100 + seq, "kind": "order_requested", "order": "coffee-3",
                       "item": "coffee", "cycle": 3, "ask": 0, "pct": 9, "days": 4,
                       "wall": 1767600000})
    return auth.encode_report({
        "seq": seq, "boot": 1, "uptime_ms": 1000 * seq, "clock": int(RACE_T) - 100 + seq,
        "counters": {"brews": {"espresso": 2 * seq}, "brews_total": 2 * seq},
        "days": [{"day": RACE_DAY, "brews": {"espresso": 2 * seq}}], "events": events,
        "supplies": {"coffee": {"cycle": 3, "pct": 10}}, "config": {"applied": 0}})


@pytest.mark.slow
def test_the_same_reports_raced_by_several_writers_merge_once(ledger_at):
    """Four writers, each its own connection (as the cloud's worker processes are), apply
    every report of five devices at once, each in its own order and batches: every report
    is applied by exactly one of them (the others hear a duplicate), every event stored once,
    the order placed once, the counters and the invoice those of the reports; a device
    they all provision at once is created by one."""
    import random
    import threading

    from brewmeter.cloud.report import parse_report as parse


    devices, seqs = [f"bm-race{i}" for i in range(5)], range(1, 9)
    first = Ledger(ledger_at, now=lambda: RACE_T, busy_timeout_s=30)
    for dev in devices:
        first.add_device(dev, "ab" * 32)
        first.set_plan(dev, {"price_per_brew": 0.35})
    writers = [first] + [Ledger(ledger_at, now=lambda: RACE_T, busy_timeout_s=30)
                         for _ in range(3)]
    work = [(dev, seq) for dev in devices for seq in seqs]
    applied: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(writers))

    created: list[bool] = []

    def race(ledger: Ledger, seed: int) -> None:
        mine = work[:]
        random.Random(seed).shuffle(mine)
        start.wait()
        created.append(ledger.add_device("bm-race-new", "cd" * 32))  # provisioned at once
        while mine:
            batch, mine = mine[:seed + 1], mine[seed + 1:]
            results = ledger.apply_batch([(d, parse(_race_report(s))) for d, s in batch])
            for (dev, seq), r in zip(batch, results, strict=True):
                if isinstance(r, BaseException):
                    errors.append(r)
                elif not r.duplicate:
                    applied.append((dev, seq))

    threads = [threading.Thread(target=race, args=(w, i)) for i, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(created) == [False, False, False, True]
    assert sorted(applied) == sorted(work)  # each report applied once, by one writer
    for dev in devices:
        d = first.device(dev)
        assert d["counters"]["brews_total"] == 16 and d["reports"] == 8 and d["events"] == 14
        assert [o["order"] for o in first.orders(dev) or []] == ["coffee-3"]
        inv = first.invoice(dev, date(2026, 3, 1), date(2026, 3, 31))
        assert inv["brews"] == 16 and inv["total_cents"] == 16 * 35
    for w in writers:
        w.close()
