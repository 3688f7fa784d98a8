"""`brewmeter cloud --workers N`: several processes on one port and one PostgreSQL database.
Exactly-once across them is the database's (row locks, keys, transactions), not a lock in
one process: the same report raced through two connections of their own (as two workers
hold) merges once, an order id is placed once, a month closes once."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
from brewmeter import cli
from brewmeter.cloud import auth
from brewmeter.cloud.ledger import Ledger
from brewmeter.cloud.report import parse_report

DEV = "bm-race01"
KEY = "5a" * 32
T0 = 1_790_000_000.0  # 2026-09-21
RACES = 60


def _report(seq: int, order: int | None = None) -> dict:
    events = [] if order is None else [
        {"id": seq, "kind": "order_requested", "order": f"coffee-{order}", "item": "coffee",
         "cycle": order, "ask": 0}]
    return {"seq": seq, "fw": "0.1.0", "boot": 1, "uptime_ms": 1000 * seq, "clock": int(T0),
            "counters": {"brews_total": seq, "brews": {"espresso": seq}}, "events": events}


def _parsed(r: dict):
    return parse_report(auth.encode_report(r), str(r["seq"]))


def test_more_than_one_worker_on_sqlite_is_refused_clearly(tmp_path, capsys):
    assert cli.main(["cloud", "--workers", "2", "--db", str(tmp_path / "l.db")]) == 2
    assert "--workers 2 needs --db postgresql://" in capsys.readouterr().err
    assert not (tmp_path / "l.db").exists()  # nothing made
    assert cli.main(["cloud", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_racing_reports_orders_and_month_closes_land_once(postgres):
    """Two ledgers, each with its own connection and its own lock (two workers), apply the
    same reports at the same moment, again and again."""
    url = postgres.new_schema()
    now = [T0]
    a = Ledger(url, now=lambda: now[0])
    b = Ledger(url, now=lambda: now[0])
    try:
        a.add_device(DEV, KEY)
        a.set_plan(DEV, {"price_per_brew": 0.35})
        now[0] = T0 + 70 * 86400  # two months later: the first ones close on its next report
        gate = threading.Barrier(2)
        errors: list[BaseException] = []

        def race(ledger: Ledger, reports: list) -> None:
            try:
                for rs in reports:
                    gate.wait(10)
                    for r in ledger.apply_batch([(DEV, r) for r in rs]):
                        if isinstance(r, Exception):
                            raise r
            except BaseException as e:  # (a thread's error fails the test below)
                errors.append(e)
                gate.abort()

        # Each race: the same report on both sides; and two different reports placing the
        # same order, one on each side.
        same = [[_parsed(_report(3 * k + 1))] for k in range(RACES)]
        ones = [[_parsed(_report(3 * k + 2, order=k))] for k in range(RACES)]
        twos = [[_parsed(_report(3 * k + 3, order=k))] for k in range(RACES)]
        ta = threading.Thread(target=race, args=(a, _interleave(same, ones)))
        tb = threading.Thread(target=race, args=(b, _interleave(same, twos)))
        ta.start(), tb.start()
        ta.join(), tb.join()
        assert errors == []
        db = a.db
        (reports,) = db.execute("SELECT count(*) FROM reports WHERE device=?",
                                (DEV,)).fetchone()
        assert reports == 3 * RACES  # each seq stored once
        assert a.device(DEV)["reports"] == 3 * RACES  # ... and counted once
        orders = db.execute("SELECT id, count(*) FROM orders WHERE device=? GROUP BY id",
                            (DEV,)).fetchall()
        assert sorted(orders) == sorted((f"coffee-{k}", 1) for k in range(RACES))
        months = db.execute("SELECT month, count(*) FROM closed_months WHERE device=? "
                            "GROUP BY month", (DEV,)).fetchall()
        assert months and all(n == 1 for _, n in months)
    finally:
        a.close()
        b.close()


def _interleave(xs: list, ys: list) -> list:
    return [x for pair in zip(xs, ys, strict=True) for x in pair]


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


@pytest.mark.slow
def test_two_workers_serve_one_port_and_a_report_raced_to_both_merges_once(postgres):
    url = postgres.new_schema()
    token = "t0ken-" * 4
    proc = subprocess.Popen(
        [sys.executable, "-m", "brewmeter.cloud", "--workers", "2", "--port", "0",
         "--db", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "BREWMETER_ADMIN_TOKEN": token})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert "2 workers" in line, line + (proc.stderr.read() if proc.poll() else "")
        m = re.search(r"http://\S+", line)
        assert m
        workers = [w for w in _children(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes()]
        assert len(workers) == 2
        before = {w: _cpu_ticks(w) for w in workers}
        statuses = asyncio.run(_race_over_http(m.group(0), token))
        assert set(statuses) == {200}
        assert all(_cpu_ticks(w) > before[w] for w in workers)  # both served
        ledger = Ledger(url)
        try:
            for k in range(RACES):  # each merged once, its order placed once
                assert ledger.device(_dev(k))["reports"] == 1
                assert [o["order"] for o in ledger.orders(_dev(k)) or ()] == [f"coffee-{k}"]
        finally:
            ledger.close()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def _dev(k: int) -> str:
    return f"bm-race{k:02d}"


async def _race_over_http(base: str, token: str) -> list[int]:
    """Each machine's report sent four times at once, each over a connection of its own
    (the kernel picks the worker per connection)."""
    async with aiohttp.ClientSession(base) as s:
        for k in range(RACES):
            async with s.put(f"/v1/admin/devices/{_dev(k)}", json={"key": KEY},
                             headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status in (200, 201), await r.text()

    async def send(path: str, body: bytes, headers: dict[str, str]) -> int:
        async with aiohttp.ClientSession(base) as s, s.post(path, data=body,
                                                            headers=headers) as r:
            await r.read()
            return r.status

    statuses: list[int] = []
    for k in range(RACES):
        path, body, headers = auth.signed_report(_dev(k), KEY, _report(1, order=k))
        statuses += await asyncio.gather(*(send(path, body, headers) for _ in range(4)))
    return statuses
