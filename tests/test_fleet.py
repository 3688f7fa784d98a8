"""`brewmeter fleet`: many machines, each the firmware's Device and Syncer with its own
household, reporting over HTTP to one emulated cloud (its own process) that goes down for
hours; then the ledger checked against the machines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from brewmeter import cli
from brewmeter.cloud.ledger import Ledger
from brewmeter.runs import fleet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> fleet.Outcome:
    import gc

    db = tmp_path_factory.mktemp("fleet") / "ledger.db"
    before = gc.get_threshold()
    o = fleet.run(fleet.Plan(devices=20, days=5, outage=(2, 6), seed=3, db=db))
    assert gc.get_threshold() == before  # (the fleet's own, for its run only)
    return o


@pytest.mark.slow
def test_a_small_fleet_through_an_outage_loses_and_doubles_nothing(small):
    d = small.json()
    assert d["ok"] and d["lost_brews"] == d["doubled_brews"] == 0
    assert d["counters_mismatched"] == d["invoice_months_wrong"] == 0
    assert d["invoice_months"] >= 20  # every machine billed
    brews = sum(c["brews_total"] for c in small.machines.values())
    assert brews > 20 * 5 * 3  # the households did use their machines
    # The outage happened: reports refused in its hours, none answered, and after it the
    # backlog drained.
    assert d["failures"] > 0 and d["drain_s"] is not None and d["drain_s"] > 0
    outage_hours = range(2 * 24, 2 * 24 + 6)
    assert sum(small.per_hour[h] for h in outage_hours) > 0
    assert d["reports"] + d["failures"] == d["requests"]
    assert d["steady_requests_per_h"] > 0 and d["post_outage_peak_ratio"] is not None
    assert d["latency_p50_ms"] <= d["latency_p99_ms"]


@pytest.mark.slow
def test_a_fleet_with_no_outage_has_no_report_fail():
    """The cloud stopped to count its CPU and started again for the end's syncs: those
    connect anew, none fails on a socket to the stopped process."""
    o = fleet.run(fleet.Plan(devices=10, days=2, seed=1))
    assert o.failures == 0 and o.reports == o.requests > 10 * 2
    assert o.json()["ok"]


@pytest.mark.slow
def test_the_checks_catch_a_brew_lost_doubled_or_a_counter_off(small):
    assert small.period is not None and small.db is not None
    dev = fleet.device_id(0)
    ledger = Ledger(small.db, synchronous="NORMAL")
    try:
        assert fleet.check(ledger, small.machines, *small.period)["ok"]
        with ledger.db.tx() as db:  # a day's brews of one machine lost
            (day,) = db.execute("SELECT max(day) FROM day_usage WHERE device=? AND "
                                "field='brews_total' AND value>0", (dev,)).fetchone()
            db.execute("DELETE FROM day_usage WHERE device=? AND day=?", (dev, day))
        got = fleet.check(ledger, small.machines, *small.period)
        assert got["lost_brews"] > 0 and not got["ok"]
        other = fleet.device_id(1)
        with ledger.db.tx() as db:  # another's billed twice on one day
            db.execute("UPDATE day_usage SET value=value*2 WHERE device=? AND "
                       "field='brews_total' AND day=(SELECT max(day) FROM day_usage WHERE "
                       "device=? AND field='brews_total' AND value>0)", (other, other))
            db.execute("UPDATE counters SET value=value+1 WHERE device=? AND "
                       "field='brews_total'", (other,))
        got = fleet.check(ledger, small.machines, *small.period)
        assert got["doubled_brews"] > 0 and got["counters_mismatched"] == 1
    finally:
        ledger.close()


@pytest.mark.slow
def test_a_ledger_restored_from_a_day_old_backup_is_brought_back_by_the_machines(tmp_path):
    db = tmp_path / "ledger.db"
    o = fleet.run(fleet.Plan(devices=10, days=4, restore_at=2, db=db))
    d = o.json()
    assert d["restore_at_day"] == 2 and d["ok"]
    assert d["lost_brews"] == d["doubled_brews"] == d["counters_mismatched"] == 0
    # The restore did go back: the ledger holds a day's reports fewer than were answered.
    ledger = Ledger(db, synchronous="NORMAL")
    try:
        stored = sum((ledger.device(dev) or {})["reports"] for dev in o.machines)
    finally:
        ledger.close()
    assert stored < o.reports
    assert (tmp_path / "ledger.db.before-restore").exists()


def test_bad_outage_and_sizes_are_refused_clearly(capsys):
    for args, said in ((["--outage", "10x6"], "expected DAY+HOURS"),
                       (["--outage", "4+30", "--days", "5"], "ends after the 5 days"),
                       (["--devices", "0"], "--devices must be at least 1"),
                       (["--days", "5", "--restore-at", "5"], "a day from 1"),
                       (["--restore-at", "3", "--outage", "3+2"], "the cloud is down then"),
                       (["--workers", "2"], "--workers 2 needs --db postgresql://")):
        assert cli.main(["fleet", *args]) == 2
        assert said in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_prints_json_and_progress(tmp_path):
    p = subprocess.run([sys.executable, "-m", "brewmeter.cli", "fleet", "--devices", "5",
                        "--days", "2", "--outage", "1+3", "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["ok"] and d["devices"] == 5 and d["outage"] == {"day": 1, "hours": 3}
    assert {"lost_brews", "doubled_brews", "reports_per_s", "latency_p99_ms",
            "post_outage_peak_ratio", "drain_s"} <= set(d)
    assert "day 2/2" in p.stderr


def test_the_cloud_process_ends_with_the_fleet(tmp_path):
    from brewmeter.clock import VirtualClock
    from brewmeter.runs.fleetnet import Cloud

    cloud = Cloud(tmp_path / "ledger.db", VirtualClock(), tmp_path)
    cloud.start()
    (proc,) = cloud.procs
    assert proc is not None and proc.stdin is not None and proc.poll() is None
    proc.stdin.close()  # as when the fleet's process dies, however
    assert proc.wait(10) == 0
    cloud.stop()


@pytest.mark.slow
def test_the_same_seed_gives_the_same_run_whatever_the_clouds_speed(small, tmp_path):
    again = fleet.run(fleet.Plan(devices=20, days=5, outage=(2, 6), seed=3,
                                 db=tmp_path / "ledger.db"))
    assert again.per_hour == small.per_hour
    assert (again.reports, again.failures) == (small.reports, small.failures)
    assert again.machines == small.machines


async def test_the_pool_keeps_the_firmwares_bounds_and_the_replies_order():
    """Replies read from a kept-alive connection, each reaching its sender when its batch
    is released; a reply over the bound, one without a length, and a refused
    connection are the firmware's HttpError."""
    from collections import Counter

    from app import http
    from brewmeter.clock import VirtualClock
    from brewmeter.runs import fleetnet
    from brewmeter.runs.fleetcheck import Outcome

    replies = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: D1\r\n\r\nok",
               b"HTTP/1.1 503 No\r\nContent-Length: 0\r\nRetry-After: 7\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
               b"HTTP/1.1 200 OK\r\n\r\nno length"]
    got: Counter[bytes] = Counter()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for reply in replies:
            head = await r.readuntil(b"\r\n\r\n")
            n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            got[await r.readexactly(n)] += 1
            w.write(reply)
        await w.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = fleetnet.Pool(Outcome(1, 1), VirtualClock())
    try:
        fleetnet.BATCH.set(1)
        date = [b""]  # gets the reply's Date header, as app.http.post's
        a = asyncio.create_task(pool.post(url, "/r", {"X-Seq": 1}, b"one", date=date))
        await asyncio.sleep(0.2)
        assert not a.done()  # read, held until its batch is released
        pool.release(1)
        assert await a == (200, 0, b"ok") and date[0] == b"D1"
        assert await pool.post(url, "/r", {}, "two") == (503, 7, b"")
        assert len(pool.conns) == 1  # both on one connection, kept alive
        with pytest.raises(http.HttpError, match="over 4096 bytes"):
            await pool.post(url, "/r", {}, b"three")
        assert not pool.conns  # dropped: what followed on it is not read
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
    assert got == {b"one": 1, b"two": 1, b"three": 1}
    with pytest.raises(http.HttpError):
        await pool.post(url, "/r", {}, b"four")  # refused


async def test_the_pool_opens_at_most_its_connections_for_a_batch_larger_than_them():
    """A batch of 3 x CONCURRENCY reports at once (as at the start, when every machine is
    due): CONCURRENCY connections, the rest of the requests queued on them, each answered."""
    from brewmeter.clock import VirtualClock
    from brewmeter.runs import fleetnet
    from brewmeter.runs.fleetcheck import Outcome

    opened = 0

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal opened
        opened += 1
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await r.readexactly(n)
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (n, body))
        except asyncio.IncompleteReadError:
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = fleetnet.Pool(Outcome(1, 1), VirtualClock())
    n = 3 * fleetnet.CONCURRENCY
    try:
        pool.release(1)
        fleetnet.BATCH.set(1)
        got = await asyncio.gather(*(pool.post(url, "/r", {}, b"%d" % i) for i in range(n)))
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
    assert got == [(200, 0, b"%d" % i) for i in range(n)]
    assert opened == fleetnet.CONCURRENCY


@pytest.mark.slow
def test_a_fleet_on_postgresql_with_two_workers_loses_and_doubles_nothing(postgres):
    o = fleet.run(fleet.Plan(devices=12, days=4, outage=(1, 4), restore_at=3, workers=2,
                             db=postgres.new_schema()))
    d = o.json()
    assert d["ok"] and d["lost_brews"] == d["doubled_brews"] == d["counters_mismatched"] == 0
    assert d["failures"] > 0 and d["reports"] > 12 * 4


async def test_the_pool_writes_nothing_more_to_a_connection_it_saw_fail(caplog, monkeypatch):
    """The cloud stops while a connection is kept alive (an outage): the requests that
    follow at once fail as refused, each with the firmware's HttpError, and none is written
    to the dead connection after a write to it failed (asyncio warns of each such write)."""
    import time

    from app import http
    from brewmeter.clock import VirtualClock
    from brewmeter.runs import fleetnet
    from brewmeter.runs.fleetcheck import Outcome

    open_: list[asyncio.StreamWriter] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        open_.append(w)
        head = await r.readuntil(b"\r\n\r\n")
        await r.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r")[0]))
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    monkeypatch.setattr(fleetnet, "CONCURRENCY", 1)  # every request on the one connection
    pool = fleetnet.Pool(Outcome(1, 1), VirtualClock())
    try:
        pool.release(1)
        fleetnet.BATCH.set(1)
        assert await pool.post(url, "/r", {}, b"one") == (200, 0, b"ok")
        server.close()  # the cloud stops: its listener, then its connection
        await server.wait_closed()
        for w in open_:
            w.transport.abort()
        time.sleep(0.05)  # its close reaches our socket before the loop looks again
        with caplog.at_level("WARNING", logger="asyncio"):
            got = await asyncio.gather(*(pool.post(url, "/r", {}, b"%d" % i)
                                         for i in range(20)), return_exceptions=True)
    finally:
        pool.close()
    assert all(isinstance(g, http.HttpError) for g in got), got
    assert not [r for r in caplog.records if "socket.send" in r.getMessage()]


def test_a_machines_days_made_ahead_are_the_days_it_would_have_had():
    """The fleet makes a machine's next day while it waits for the cloud: the same day of
    use, from the machine's own generator, as when it is made on the day."""
    from brewmeter.profiles import load_profile
    from brewmeter.runs.fleetmachine import Machine
    from brewmeter.runs.household import Link
    from brewmeter.runs.usage import DAY_MS

    profile = load_profile("emulator")
    made = [Machine(7, 3, profile, "http://127.0.0.1:9", Link(), lambda: 0) for _ in range(2)]
    days: list[list[list[tuple[int, int, int, int]]]] = [[], []]
    for d in range(1, 6):
        assert made[0].prepare() and not made[0].prepare()  # (made once)
        for m, seen in zip(made, days, strict=True):
            m.play(m.offset + d * DAY_MS)
            seen.append(list(m.events))
    assert days[0] == days[1]
    assert all(len(d) > 10 for d in days[0]) and days[0][0] != days[0][1]
