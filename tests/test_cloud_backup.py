"""`brewmeter cloud backup PATH` / `restore PATH`: the ledger copied with SQLite's online
backup or pg_dump (the cloud may be serving), and put back; bad input changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import pytest
from brewmeter import cli
from brewmeter.cloud import CloudServer, auth, backup
from brewmeter.cloud.ledger import Ledger

KEY = "5a" * 32


def _report(seq: int, brews: int) -> dict:
    return {"seq": seq, "boot": 1, "uptime_ms": 1000 * seq, "clock": 1_767_571_200 + seq,
            "counters": {"brews_total": brews, "boots": 1}, "days": [], "events": [],
            "config": {"applied": 0}}


async def _post(cloud: CloudServer, seq: int, brews: int) -> None:
    path, body, headers = auth.signed_report("bm-b1", KEY, _report(seq, brews))
    async with aiohttp.ClientSession(cloud.url) as s, s.post(path, data=body,
                                                               headers=headers) as r:
        assert r.status == 200, await r.text()


def _brews(db: Path | str) -> int:
    led = Ledger(db)
    try:
        return (led.device("bm-b1") or {})["counters"]["brews_total"]
    finally:
        led.close()


async def test_a_backup_taken_while_serving_restores_that_moment(tmp_path, capsys, ledger_at):
    db, bak = ledger_at, tmp_path / "day-old.db"
    async with CloudServer(db, devices=[("bm-b1", KEY)]) as cloud:
        await _post(cloud, 1, 5)
        assert cli.main(["cloud", "backup", str(bak), "--db", str(db)]) == 0
        await _post(cloud, 2, 9)  # after the backup
    assert "1 devices" in capsys.readouterr().out
    assert _brews(db) == 9
    if db == tmp_path / "ledger.db":  # (a pg_dump file is read by restoring it)
        assert _brews(bak) == 5
    assert cli.main(["cloud", "restore", str(bak), "--db", str(db)]) == 0
    assert _brews(db) == 5  # the ledger as it was when backed up
    kept = backup.replaced(bak, db)  # what it replaced, kept
    assert kept == (f"{bak}.before-restore" if "://" in str(db) else f"{db}.before-restore")
    if db == tmp_path / "ledger.db":
        assert _brews(kept) == 9
    async with CloudServer(db) as cloud:  # serves on: the device's next report goes on
        await _post(cloud, 3, 11)
    assert _brews(db) == 11


def test_bad_backups_and_paths_are_refused_and_change_nothing(tmp_path, capsys):
    db = tmp_path / "ledger.db"
    led = Ledger(db)
    led.add_device("bm-b1", KEY)
    led.close()
    before = db.read_bytes()
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    for argv, said in (
            (["restore", str(junk)], "not a brewmeter ledger"),
            (["restore", str(empty)], "not a brewmeter ledger"),
            (["restore", str(tmp_path / "none.db")], "no such file"),
            (["restore"], "restore needs a PATH"),
            (["backup", str(tmp_path / "b.db"), "--db", ":memory:"], "need the ledger's file")):
        if "--db" not in argv:
            argv = [*argv, "--db", str(db)]
        assert cli.main(["cloud", *argv]) == 2
        assert said in capsys.readouterr().err
    assert db.read_bytes() == before and _brews_devices(db) == 1
    assert not (tmp_path / "b.db").exists()


def _brews_devices(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT count(*) FROM devices").fetchone()[0]


@pytest.mark.slow
def test_bad_backups_change_nothing_on_postgresql(tmp_path, capsys, postgres):
    url = postgres.new_schema()
    led = Ledger(url)
    led.add_device("bm-b1", KEY)
    before = led.dump()
    junk = tmp_path / "junk.dump"
    junk.write_text("not a dump")
    for path, said in ((junk, "not a brewmeter ledger"), (tmp_path / "none", "no such file")):
        assert cli.main(["cloud", "restore", str(path), "--db", url]) == 2
        assert said in capsys.readouterr().err
    assert led.dump() == before
    secret = url.replace("postgres@", "postgres:hunter2@")
    assert cli.main(["cloud", "backup", str(tmp_path / "b"), "--db", secret]) == 2
    assert "~/.pgpass" in capsys.readouterr().err and not (tmp_path / "b").exists()
    led.close()
