"""The emulated cloud, through real HTTP(S) on 127.0.0.1: signing, replay protection, the
max/dedupe merge of the sync model, placement of undated buckets, billing, desired config,
limits, every injected fault, TLS, restarts, and the `brewmeter cloud` command."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import ssl
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from brewmeter.cloud import CloudServer, Faults, Ledger, auth
from brewmeter.cloud.ledger import day_number
from brewmeter.cloud.merge import Merge
from brewmeter.cloud.server import FAULT_KINDS, make_app
from brewmeter.cloud.shared import protocol as P
from brewmeter.flashfiles import emulator_provision

DEV = "bm-240ac4000001"
KEY = "11" * 32
OTHER_KEY = "22" * 32
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()  # the cloud's fake "now"
DAY0 = int(T0 // 86400)
ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def rep(seq: int, brews: int = 0, *, boot: int = 5, uptime_ms: int | None = None,
        clock: int = 0, days: list[dict[str, Any]] | None = None,
        events: list[dict[str, Any]] | None = None, config: dict[str, Any] | None = None,
        **counters: int) -> dict[str, Any]:
    """A report whose counters grow with `brews` unless given."""
    c = {"brews": {"espresso": brews}, "brews_total": brews, "water_ml": 40 * brews,
         "boots": boot}
    c.update(counters)
    return {"seq": seq, "fw": "0.1.0", "boot": boot,
            "uptime_ms": 1000 * seq if uptime_ms is None else uptime_ms, "clock": clock,
            "counters": c, "days": days or [], "events": events or [],
            "config": config if config is not None else {"applied": 0}}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def synchronous() -> str:
    """SQLite's synchronous mode for the `cloud` fixture (NORMAL: the loop writes the ledger)."""
    return "FULL"


@pytest.fixture
async def cloud(clock: Clock, ledger_at, synchronous):
    ledger = Ledger(ledger_at, now=clock, synchronous=synchronous)
    ledger.add_device(DEV, KEY)
    async with CloudServer(ledger, faults=Faults(seed=1)) as c:
        yield c
    ledger.close()


async def post(http: aiohttp.ClientSession, report: dict[str, Any] | bytes, *,
               key: str = KEY, dev: str = DEV, seq: int | None = None,
               timeout: float | None = None) -> tuple[int, Any]:
    path, body, headers = auth.signed_report(dev, key, report, seq)
    async with http.post(path, data=body, headers=headers,
                         timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        return r.status, await r.json()


async def get(http: aiohttp.ClientSession, cloud: CloudServer, path: str,
              **params: str) -> Any:
    async with http.get(path, params=params, headers=cloud.admin_headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def put(http: aiohttp.ClientSession, cloud: CloudServer, path: str, body: Any) -> Any:
    async with http.put(path, json=body, headers=cloud.admin_headers) as r:
        assert r.status in (200, 201), await r.text()
        return await r.json()


# -- authentication and replay ---------------------------------------------------------------

async def test_signed_report_is_accepted(cloud, http):
    status, reply = await post(http, rep(1, 3, events=[{"id": 1, "kind": "filter_changed"}]))
    assert status == 200
    assert reply == {"ack": [1], "seq": 1, "config": None}  # no orders, no refill: omitted
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["counters"]["brews"] == {"espresso": 3}
    assert dev["last_seq"] == 1 and dev["fw"] == "0.1.0" and dev["events"] == 1


async def test_bad_signatures_change_nothing(cloud, http):
    cloud.ledger.add_device("bm-other", OTHER_KEY)
    before = cloud.ledger.dump()
    assert (await post(http, rep(1, 3), key=OTHER_KEY))[0] == 401  # wrong key
    assert (await post(http, rep(1, 3), dev="bm-nobody"))[0] == 401  # unknown device
    path, body, headers = auth.signed_report(DEV, KEY, rep(1, 3))
    tampered = body.replace(b'"espresso":3', b'"espresso":9')
    assert tampered != body
    async with http.post(path, data=tampered, headers=headers) as r:
        assert r.status == 401
    for missing in (auth.SIG_HEADER, auth.SEQ_HEADER):
        h = {k: v for k, v in headers.items() if k != missing}
        async with http.post(path, data=body, headers=h) as r:
            assert r.status == 401
    h = {**headers, auth.SEQ_HEADER: "2"}  # the seq is signed too
    async with http.post(path, data=body, headers=h) as r:
        assert r.status == 401
    assert cloud.ledger.dump() == before


async def test_replayed_seq(cloud, http):
    first = rep(1, 3, events=[{"id": 1, "kind": "descaled"}])
    status, reply = await post(http, first)
    assert status == 200
    before = cloud.ledger.dump()
    # An identical retry is idempotent: same reply, nothing applied twice.
    assert await post(http, first) == (200, reply)
    assert cloud.ledger.dump() == before
    # The same seq with another body is a replay (or a device that lost its state): 409,
    # telling it the highest seq accepted so such a device can carry on above it.
    status, err = await post(http, rep(1, 5))
    assert status == 409 and err["seq"] == 1
    # Nothing of it is applied; the cloud only notes the conflict (see test_cloud_trust).
    (noted,) = cloud.ledger.db.execute("SELECT conflict_seq FROM devices").fetchone()
    assert noted == 1
    cloud.ledger.db.execute("UPDATE devices SET conflict_seq=NULL")
    assert cloud.ledger.dump() == before


# -- merging: max, dedupe ----------------------------------------------------------------------

async def test_reordered_and_duplicated_reports(cloud, http):
    sends = [3, 1, 2, 3, 1, 5, 4, 2]
    for seq in sends:
        day = [{"day": DAY0, "brews": {"espresso": seq}, "water_ml": 40 * seq}]
        ev = [{"id": i, "kind": "service", "n": i} for i in range(1, seq + 1)]
        status, reply = await post(http, rep(seq, 10 * seq, days=day, events=ev))
        assert status == 200
        assert reply["ack"] == list(range(1, seq + 1))
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["counters"]["brews"]["espresso"] == 50 and dev["counters"]["water_ml"] == 2000
    assert dev["last_seq"] == 5 and dev["reports"] == 5 and dev["flags"] == []
    events = await get(http, cloud, f"/v1/devices/{DEV}/events")
    assert [e["id"] for e in events] == [1, 2, 3, 4, 5]
    days = await get(http, cloud, f"/v1/devices/{DEV}/days")
    assert [(d["day"], d["brews"], d["water_ml"]) for d in days["days"]] == \
        [(DAY0, {"espresso": 5}, 200)]


async def test_counter_regression_is_flagged_not_applied(cloud, http):
    assert (await post(http, rep(1, 10, rinses=4)))[0] == 200
    status, _ = await post(http, rep(2, 2, rinses=6))  # a new flash: brews restart
    assert status == 200
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["counters"]["brews"]["espresso"] == 10  # not applied
    assert dev["counters"]["rinses"] == 6  # what did grow still counts
    flags = {(f["kind"], f["field"]): f for f in dev["flags"]}
    assert set(flags) == {("counter_regression", "brews.espresso"),
                          ("counter_regression", "brews_total"),
                          ("counter_regression", "water_ml")}
    f = flags["counter_regression", "brews.espresso"]
    assert (f["stored"], f["reported"], f["first_seq"], f["count"]) == (10, 2, 2, 1)


async def test_filter_cycle_counters_restart_with_each_filter(cloud, http):
    await post(http, rep(1, 10, filters=1, filter_ml=900, filter_brews=6))
    await post(http, rep(3, 12, filters=2, filter_ml=50, filter_brews=1))  # filter changed
    await post(http, rep(2, 11, filters=1, filter_ml=950, filter_brews=7))  # late, old cycle
    await post(http, rep(4, 13, filters=2, filter_ml=40, filter_brews=2))   # ml went down
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    c = dev["counters"]
    assert (c["filters"], c["filter_ml"], c["filter_brews"]) == (2, 50, 2)
    assert [(f["kind"], f["field"]) for f in dev["flags"]] == \
        [("counter_regression", "filter_ml")]


async def test_late_old_report_is_not_a_regression(cloud, http):
    await post(http, rep(2, 10))
    await post(http, rep(1, 4))  # older, arriving late: lower by nature
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["counters"]["brews"]["espresso"] == 10 and dev["flags"] == []
    assert dev["last_seq"] == 2


async def test_event_id_reused_for_another_event_is_flagged(cloud, http):
    await post(http, rep(1, events=[{"id": 1, "kind": "filter_changed"}]))
    status, reply = await post(http, rep(2, events=[{"id": 1, "kind": "descaled"}]))
    assert status == 200 and reply["ack"] == [1]  # acked: the device must not hold it forever
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert [(f["kind"], f["field"], f["reported"]["kind"]) for f in dev["flags"]] == \
        [("event_conflict", "1", "descaled")]
    events = await get(http, cloud, f"/v1/devices/{DEV}/events")
    assert [e["kind"] for e in events] == ["filter_changed"]


# -- undated buckets ---------------------------------------------------------------------------

async def test_unplaced_bucket_is_placed_when_the_clock_arrives(cloud, http, clock):
    clock.t = 20_781 * 86400 + 3600  # the cloud's day is the device's
    loose = [{"boot": 5, "at_ms": 60_000, "brews": {"lungo": 1}, "water_ml": 110}]
    await post(http, rep(1, 1, uptime_ms=100_000, days=loose))
    days = await get(http, cloud, f"/v1/devices/{DEV}/days")
    assert days["days"] == []
    assert days["unplaced"] == [{"boot": 5, "at_ms": 60_000, "brews": {"lungo": 1},
                                 "water_ml": 110}]
    # The clock is set 100 s after a midnight; the bucket began 140 s before that report,
    # i.e. the day before: floor((clock - (uptime_ms - at_ms)/1000) / 86400).
    clock = 20_781 * 86400 + 100
    await post(http, rep(2, 1, uptime_ms=200_000, clock=clock, days=loose))
    days = await get(http, cloud, f"/v1/devices/{DEV}/days")
    assert days["unplaced"] == []
    assert days["days"] == [{"date": "2026-11-23", "day": 20_780, "brews": {"lungo": 1},
                             "water_ml": 110, "brews_total": 1, "estimated": False}]


async def test_unplaced_bucket_is_estimated_after_a_reboot(cloud, http, clock):
    loose = {"boot": 5, "at_ms": 5_000, "brews": {"espresso": 2}, "water_ml": 80}
    await post(http, rep(1, 2, boot=5, uptime_ms=9_000, days=[loose]))  # arrives on DAY0
    clock.t += 2 * 86400
    dated = {"day": DAY0 + 2, "brews": {"espresso": 1}, "water_ml": 40}
    await post(http, rep(3, 3, boot=6, uptime_ms=9_000, clock=int(clock.t), days=[dated]))
    days = await get(http, cloud, f"/v1/devices/{DEV}/days")
    assert days["unplaced"] == []
    assert [(d["day"], d["brews"], d["estimated"]) for d in days["days"]] == \
        [(DAY0, {"espresso": 2}, True), (DAY0 + 2, {"espresso": 1}, False)]
    # Then the delayed report of boot 5 that had a clock: the estimate is corrected.
    boot5_start = (DAY0 - 3) * 86400 + 3600
    await post(http, rep(2, 2, boot=5, uptime_ms=20_000, clock=boot5_start + 20, days=[loose]))
    days = await get(http, cloud, f"/v1/devices/{DEV}/days")
    assert [(d["day"], d["brews"], d["estimated"]) for d in days["days"]] == \
        [(DAY0 - 3, {"espresso": 2}, False), (DAY0 + 2, {"espresso": 1}, False)]


async def test_day_query_range(cloud, http):
    buckets = [{"day": DAY0 - 4 + i, "brews": {"espresso": i + 1}} for i in range(5)]
    await post(http, rep(1, 15, days=buckets))
    first = date.fromordinal(date(1970, 1, 1).toordinal() + DAY0 - 3).isoformat()
    last = date.fromordinal(date(1970, 1, 1).toordinal() + DAY0 - 1).isoformat()
    days = await get(http, cloud, f"/v1/devices/{DEV}/days", **{"from": first, "to": last})
    assert [d["brews_total"] for d in days["days"]] == [2, 3, 4]
    async with http.get(f"/v1/devices/{DEV}/days", params={"from": "2026-13-01"},
                        headers=cloud.admin_headers) as r:
        assert r.status == 400


# -- billing -----------------------------------------------------------------------------------

def dn(s: str) -> int:
    return day_number(date.fromisoformat(s))


async def usage(http, per_day: dict[str, int]) -> None:
    buckets = [{"day": dn(d), "brews": {"espresso": n - n // 3, "lungo": n // 3}}
               for d, n in per_day.items()]
    assert (await post(http, rep(1, days=buckets)))[0] == 200


async def test_invoice_per_brew(cloud, http):
    await usage(http, {"2026-01-10": 7, "2026-01-30": 2, "2026-01-31": 3, "2026-02-01": 4,
                       "2026-03-01": 9})
    plan = await put(http, cloud, f"/v1/admin/devices/{DEV}/plan", {"price_per_brew": 0.35})
    assert plan["price_per_brew_cents"] == 35
    inv = await get(http, cloud, f"/v1/devices/{DEV}/invoice",
                    **{"from": "2026-01-15", "to": "2026-02-28"})
    # January from the 15th: 2 + 3 brews = 5 x 35 = 175; February: 4 x 35 = 140.
    assert [(m["month"], m["from"], m["to"], m["brews"], m["amount_cents"])
            for m in inv["months"]] == [("2026-01", "2026-01-15", "2026-01-31", 5, 175),
                                        ("2026-02", "2026-02-01", "2026-02-28", 4, 140)]
    assert inv["total_cents"] == 315 and inv["brews"] == 9


async def test_invoice_monthly_plan_with_rollover(cloud, http, clock):
    clock.t = datetime(2026, 5, 1, tzinfo=UTC).timestamp()  # all of it in the past
    await usage(http, {"2026-01-05": 12, "2026-01-20": 8,                  # Jan 20
                       "2026-02-02": 50, "2026-02-14": 30, "2026-02-27": 10,  # Feb 90
                       "2026-03-31": 10})                                   # Mar 10, Apr 0
    await put(http, cloud, f"/v1/admin/devices/{DEV}/plan",
              {"monthly_fee": 20, "included": 50, "rollover_max": 30, "overage_per_brew": 0.4,
               "start": "2026-01-01"})
    inv = await get(http, cloud, f"/v1/devices/{DEV}/invoice",
                    **{"from": "2026-01-01", "to": "2026-04-30"})
    rows = [(m["month"], m["brews"], m["rollover_in"], m["used_included"], m["used_rollover"],
             m["overage"], m["rollover_out"], m["amount_cents"]) for m in inv["months"]]
    assert rows == [
        # Jan: 20 of 50 used, 30 unused roll over (cap 30).
        ("2026-01", 20, 0, 20, 0, 0, 30, 2000),
        # Feb: 50 included + 30 rolled over, 10 over at 40 c: 2000 + 400.
        ("2026-02", 90, 30, 50, 30, 10, 0, 2400),
        # Mar: 40 unused, capped at 30.
        ("2026-03", 10, 0, 10, 0, 0, 30, 2000),
        # Apr: nothing used: 50 + 30 unused, capped at 30.
        ("2026-04", 0, 30, 0, 0, 0, 30, 2000),
    ]
    assert inv["total_cents"] == 8400
    # An invoice for February alone still carries January's rollover.
    feb = await get(http, cloud, f"/v1/devices/{DEV}/invoice",
                    **{"from": "2026-02-10", "to": "2026-02-20"})
    assert [(m["month"], m["rollover_in"], m["amount_cents"]) for m in feb["months"]] == \
        [("2026-02", 30, 2400)]


async def test_invoice_needs_a_plan_and_valid_amounts(cloud, http):
    async with http.get(f"/v1/devices/{DEV}/invoice", headers=cloud.admin_headers,
                        params={"from": "2026-01-01", "to": "2026-01-31"}) as r:
        assert r.status == 409
    for bad in ({"price_per_brew": 0.355}, {"price_per_brew": -1}, {"monthly_fee": 20},
                {"price_per_brew": 1, "included": 3}):
        async with http.put(f"/v1/admin/devices/{DEV}/plan", json=bad,
                            headers=cloud.admin_headers) as r:
            assert r.status == 400, bad


# -- desired configuration ---------------------------------------------------------------------

async def test_desired_config_round_trip(cloud, http):
    out = await put(http, cloud, f"/v1/admin/devices/{DEV}/config",
                    {"settings": {"sync_interval_s": 600}})
    assert out == {"version": 1, "settings": {"sync_interval_s": 600}}
    _, reply = await post(http, rep(1, config={"applied": 0}))
    assert reply["config"] == {"version": 1, "settings": {"sync_interval_s": 600}}
    _, reply = await post(http, rep(2, config={"applied": 1}))
    assert reply["config"] is None
    await put(http, cloud, f"/v1/admin/devices/{DEV}/config", {"settings": {"lead_days": 9}})
    _, reply = await post(http, rep(3, config={"applied": 1}))
    assert reply["config"]["version"] == 2
    rejected = {"applied": 1, "rejected": {"version": 2, "reason": "flash full"}}
    _, reply = await post(http, rep(4, config=rejected))
    assert reply["config"] is None  # refused: not sent again
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["config"] == {"desired": {"version": 2, "settings": {"lead_days": 9}},
                             "applied": 1,
                             "rejected": {"version": 2, "reason": "flash full"}}


async def test_admin_endpoints_need_the_token(cloud, http):
    async with http.get("/v1/health") as r:
        assert r.status == 200 and (await r.json())["ok"] is True
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with http.get(f"/v1/devices/{DEV}", headers=headers) as r:
            assert r.status == 401
        async with http.put(f"/v1/admin/devices/{DEV}/config", json={"settings": {}},
                            headers=headers) as r:
            assert r.status == 401
    async with http.get("/v1/devices/bm-nobody", headers=cloud.admin_headers) as r:
        assert r.status == 404


async def test_provision_over_http(cloud, http):
    key = auth.new_key()
    out = await put(http, cloud, "/v1/admin/devices/bm-new", {"key": key})
    assert out == {"id": "bm-new", "created": True}
    assert (await post(http, rep(1, 1), dev="bm-new", key=key))[0] == 200
    async with http.put("/v1/admin/devices/bm-new", json={"key": "abc"},
                        headers=cloud.admin_headers) as r:
        assert r.status == 400


# -- limits and malformed bodies ---------------------------------------------------------------

async def test_oversized_body_is_413(cloud, http):
    before = cloud.ledger.dump()
    big = rep(1, 1)
    big["events"] = [{"id": 1, "kind": "fault", "pad": "x" * 17_000}]
    status, err = await post(http, big)
    assert status == 413 and "error" in err
    assert cloud.ledger.dump() == before


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'{"seq": 1}',
    json.dumps(rep(1, -3)).encode(),                                  # negative counter
    json.dumps(rep(1, 1.5)).encode(),                                 # not an integer
    json.dumps(rep(1, days=[{"brews": {"espresso": 1}}])).encode(),    # undated, no boot
    json.dumps(rep(1, events=[{"kind": "x"}])).encode(),              # event without id
    json.dumps(rep(2, 1)).encode(),                                   # body seq != header
])
async def test_malformed_report_is_400(cloud, http, body):
    before = cloud.ledger.dump()
    status, err = await post(http, body, seq=1)
    assert status == 400 and isinstance(err["error"], str)
    assert cloud.ledger.dump() == before


async def test_crash_mid_apply_leaves_nothing(cloud, http, monkeypatch):
    await post(http, rep(1, 1))
    before = cloud.ledger.dump()

    def boom(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Merge, "_events", boom)  # after counters and days were written
    report = rep(2, 5, days=[{"day": DAY0, "brews": {"espresso": 5}}],
                 events=[{"id": 1, "kind": "service"}])
    status, err = await post(http, report)
    assert status == 500 and "nothing" in err["error"]
    assert cloud.ledger.dump() == before
    monkeypatch.undo()
    assert (await post(http, report))[0] == 200  # the device's retry goes through


def test_one_failing_report_does_not_sink_its_batch(clock):
    from brewmeter.cloud.report import parse_report

    ledger = Ledger(now=clock)
    ledger.add_device(DEV, KEY)
    good = parse_report(auth.encode_report(rep(1, 4)))
    clash = parse_report(auth.encode_report(rep(1, 9)))  # same seq, other body
    results = ledger.apply_batch([(DEV, good), (DEV, clash), ("bm-nobody", good)])
    assert results[0].seq == 1
    assert type(results[1]).__name__ == "SeqConflict"
    assert type(results[2]).__name__ == "UnknownDevice"
    assert ledger.device(DEV)["counters"]["brews"]["espresso"] == 4
    ledger.close()


@pytest.mark.parametrize("synchronous, on_the_loop", [("FULL", False), ("NORMAL", True)])
async def test_reports_raced_merge_once_whichever_thread_applies_them(clock, tmp_path,
                                                                     synchronous, on_the_loop):
    """A ledger that syncs at each commit (FULL) is written from the worker's thread; one
    that does not (NORMAL: the fleet's) from the event loop itself. Either way the same
    report sent four times at once, and one the duplicate fault applies twice, merge once."""
    import threading

    ledger = Ledger(tmp_path / "ledger.db", synchronous=synchronous, now=clock)
    ledger.add_device(DEV, KEY)
    threads = set()
    apply_batch = ledger.apply_batch

    def recorded(items):
        threads.add(threading.get_ident())
        return apply_batch(items)

    ledger.apply_batch = recorded
    report = rep(1, 7, days=[{"day": DAY0, "brews": {"espresso": 7}}],
                 events=[{"id": 1, "kind": "filter_changed"}])
    async with CloudServer(ledger, faults=Faults(seed=1)) as c, \
            aiohttp.ClientSession(c.url) as http:
        got = await asyncio.gather(*(post(http, report) for _ in range(4)))
        assert got == [(200, {"ack": [1], "seq": 1, "config": None})] * 4
        c.faults.script("duplicate")
        assert (await post(http, rep(2, 9)))[0] == 200
    assert threads == ({threading.get_ident()} if on_the_loop else
                       threads - {threading.get_ident()}) and threads
    st = ledger.stats()
    assert (st["reports"], st["events"], st["flags"]) == (2, 1, 0)
    assert ledger.device(DEV)["counters"]["brews"]["espresso"] == 9
    ledger.close()


# -- faults ------------------------------------------------------------------------------------

# kind -> (what the device sees, whether the report was stored)
EXPECTED = {
    "drop_before": ("disconnect", False), "drop_after": ("disconnect", True),
    "delay": ("timeout", True), "error_500": (500, False), "error_503": (503, False),
    "error_429": (429, False), "truncate": ("payload", True), "garbage": ("garbage", True),
    "duplicate": (200, True), "restart": (200, True),
}


def test_every_fault_kind_is_covered():
    assert set(EXPECTED) == set(FAULT_KINDS)


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
@pytest.mark.parametrize("kind", sorted(EXPECTED))
async def test_fault(cloud, http, kind):
    seen, stored = EXPECTED[kind]
    cloud.faults.script(kind)
    cloud.faults.delay_s = 0.4
    report = rep(1, 7, days=[{"day": DAY0, "brews": {"espresso": 7}}],
                 events=[{"id": 1, "kind": "filter_changed"}])
    path, body, headers = auth.signed_report(DEV, KEY, report)
    try:
        async with http.post(path, data=body, headers=headers,
                             timeout=aiohttp.ClientTimeout(total=0.2)) as r:
            got: Any = r.status
            raw = await r.read()
            if r.status < 300:
                try:
                    json.loads(raw)
                except ValueError:
                    got = "garbage"
            else:
                assert r.headers["Retry-After"] == "1"
    except aiohttp.ServerDisconnectedError:
        got = "disconnect"
    except aiohttp.ClientPayloadError:
        got = "payload"
    except TimeoutError:
        got = "timeout"
        await asyncio.sleep(0.4)  # the cloud goes on and stores it after the delay
    assert got == seen
    assert cloud.faults.log == [(DEV, "1", kind)]
    assert cloud.ledger.stats()["reports"] == (1 if stored else 0)
    # The device retries the same bytes: accepted, and nothing is doubled.
    assert (await post(http, report)) == (200, {"ack": [1], "seq": 1, "config": None})
    st = cloud.ledger.stats()
    assert (st["reports"], st["events"], st["flags"]) == (1, 1, 0)
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["counters"]["brews"]["espresso"] == 7 and dev["reports"] == 1


def test_faults_are_deterministic():
    def run(seed: int) -> list[str | None]:
        f = Faults(seed=seed, rates={"drop_after": 0.2, "error_503": 0.2, "garbage": 0.1})
        return [f.draw(DEV, str(i)) for i in range(200)]

    a = run(3)
    assert a == run(3) and a != run(4)
    share = sum(k == "drop_after" for k in a) / len(a)
    assert 0.1 < share < 0.3
    with pytest.raises(ValueError):
        Faults(rates={"meteor": 0.1})


async def test_chaos_device_loses_and_doubles_nothing(cloud, http, clock):
    """A device syncing through every fault at random, retrying the same bytes or moving on
    to a new seq, ends with the cloud holding exactly its counters, days and events."""
    faults = cloud.faults
    faults.rates = {k: 0.05 for k in FAULT_KINDS}  # half of all requests go wrong
    faults.delay_s = 0.15
    rng = random.Random(5)
    brews, seq, next_event, outbox = 0, 0, 1, []
    day_brews: dict[int, int] = {}
    clock_day = DAY0
    for step in range(60):
        if rng.random() < 0.3:
            clock_day += 1
            clock.t += 86400  # the cloud's clock goes on with the device's
        n = rng.randint(0, 3)
        brews += n
        day_brews[clock_day] = day_brews.get(clock_day, 0) + n
        if rng.random() < 0.3:
            outbox.append({"id": next_event, "kind": "service", "step": step})
            next_event += 1
        seq += 1
        days = [{"day": d, "brews": {"espresso": b}} for d, b in day_brews.items()
                if d >= clock_day - 2]
        report = rep(seq, brews, days=days, events=list(outbox))
        for _attempt in range(3):  # retry the same bytes, then move on (a later seq)
            try:
                status, reply = await post(http, report, timeout=0.1)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            if status == 200:
                acked = set(reply["ack"])
                outbox = [e for e in outbox if e["id"] not in acked]
                break
    faults.rates = {}
    await asyncio.sleep(0.2)  # let delayed requests land
    seq += 1
    final = rep(seq, brews, days=[{"day": d, "brews": {"espresso": b}}
                                  for d, b in day_brews.items()], events=outbox)
    assert (await post(http, final))[0] == 200
    assert sum(1 for _, _, k in faults.log if k) > 10
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["counters"]["brews"]["espresso"] == brews and dev["flags"] == []
    events = await get(http, cloud, f"/v1/devices/{DEV}/events")
    assert [e["id"] for e in events] == list(range(1, next_event))
    days = await get(http, cloud, f"/v1/devices/{DEV}/days")
    assert {d["day"]: d["brews_total"] for d in days["days"]} == day_brews


# -- TLS, restarts, the command ----------------------------------------------------------------

async def test_tls_with_a_private_ca(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with CloudServer(ssl_context=server_ctx, devices=[(DEV, KEY)]) as cloud:
        assert cloud.url.startswith("https://127.0.0.1:")
        async with aiohttp.ClientSession(cloud.url) as s:
            async with s.get("/v1/health", ssl=trusting) as r:
                assert r.status == 200
            path, body, headers = auth.signed_report(DEV, KEY, rep(1, 1))
            async with s.post(path, data=body, headers=headers, ssl=trusting) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with s.get("/v1/health", ssl=ssl.create_default_context()):
                    pass


async def test_restart_keeps_the_ledger(cloud, http):
    first = rep(1, 3, events=[{"id": 1, "kind": "filter_changed"}])
    await post(http, first)
    await cloud.restart()
    assert await post(http, first) == (200, {"ack": [1], "seq": 1, "config": None})
    assert (await post(http, rep(2, 4)))[0] == 200
    await cloud.restart()
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["counters"]["brews"]["espresso"] == 4 and dev["reports"] == 2
    assert dev["events"] == 1


async def test_make_app_with_aiohttp_test_server():
    from aiohttp.test_utils import TestClient, TestServer

    ledger = Ledger()
    ledger.add_device(DEV, KEY)
    async with TestClient(TestServer(make_app(ledger, "tok"))) as client:
        path, body, headers = auth.signed_report(DEV, KEY, rep(1, 2))
        r = await client.post(path, data=body, headers=headers)
        assert r.status == 200
    ledger.close()


def test_cloud_thread_serves_synchronous_code():
    import urllib.request

    from brewmeter.cloud import cloud_thread

    with cloud_thread(devices=[(DEV, KEY)]) as cloud:
        path, body, headers = auth.signed_report(DEV, KEY, rep(1, 2))
        req = urllib.request.Request(cloud.url + path, data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["seq"] == 1
        assert cloud.ledger.device(DEV)["counters"]["brews_total"] == 2


def test_cloud_command(tmp_path):
    db = tmp_path / "ledger.db"
    prov = tmp_path / "dev.json"  # a provisioning file: the cloud takes its id and key
    prov.write_text(json.dumps(emulator_provision() | {"device_id": DEV, "key": KEY}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "brewmeter.cloud", "--port", "0", "--db", str(db),
         "--device-file", str(prov)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "BREWMETER_ADMIN_TOKEN": "tok"})
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline()).group(0)

        async def talk() -> None:
            async with aiohttp.ClientSession(url) as s:
                assert (await post(s, rep(1, 2)))[0] == 200
                async with s.get(f"/v1/devices/{DEV}",
                                 headers={"Authorization": "Bearer tok"}) as r:
                    assert (await r.json())["counters"]["brews_total"] == 2

        asyncio.run(talk())
        assert proc.stdout.readline().startswith(f"web console: {url}/console/ ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ledger = Ledger(db)  # the device and its report were kept in the file
    assert ledger.device(DEV)["reports"] == 1
    ledger.close()
    prov.write_text(json.dumps(emulator_provision() | {"device_id": DEV, "key": KEY[:-1] + "z"}))
    bad = subprocess.run([sys.executable, "-m", "brewmeter.cloud", "--device-file", str(prov)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "brewmeter cloud" in bad.stderr
    assert "field 'key': 32 random bytes as 64 hex digits" in bad.stderr
    assert KEY[:-1] not in bad.stderr
    # A key or a token on the command line, where ps shows it: refused, not repeated.
    for flag, secret in (("--device", f"{DEV}:{KEY}"), ("--admin-token", "tok-on-cmdline")):
        bad = subprocess.run([sys.executable, "-m", "brewmeter.cloud", flag, secret],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and "not taken on the command line" in bad.stderr
        assert secret not in bad.stderr and KEY not in bad.stderr


def test_protocol_document_lists_every_route():
    doc = (ROOT / "docs" / "protocol.yaml").read_text()
    assert doc.startswith("openapi: 3.1")
    documented = set(re.findall(r"^  (/v1/\S+):$", doc, re.M))
    app = make_app(Ledger(), "tok")
    served = {r.resource.canonical for r in app.router.routes() if r.resource is not None
              and r.resource.canonical.startswith("/v1/")}  # not the web console's pages
    assert documented == served


def test_firmware_signature_matches_the_clouds():
    signing = pytest.importorskip("app.signing")  # firmware/app, as the device runs it
    key = bytes.fromhex(KEY)
    path, body, headers = auth.signed_report(DEV, key, rep(1_048_577, 3))
    fw = signing.signature(key, "POST", path, 1_048_577, body)
    assert fw == headers[auth.SIG_HEADER]
    assert auth.verify(key, "POST", path, "1048577", body, fw)


# -- the contract's merge rules (docs/protocol.yaml) -------------------------------------------

def _partial(seq: int, **counters: int) -> dict[str, Any]:
    """A report carrying only the counters that changed, as the device sends them."""
    r = rep(seq)
    r["counters"] = counters
    del r["fw"]
    return r


async def test_a_late_partial_report_does_not_move_another_cycles_counters(cloud, http):
    await post(http, rep(1, 10, filters=2, filter_ml=5000, filter_brews=50))
    await post(http, rep(3, 12, filters=3, filter_ml=0, filter_brews=0))  # a new filter
    assert (await post(http, _partial(2, filter_ml=5100, filter_brews=51)))[0] == 200  # late
    c = (await get(http, cloud, f"/v1/devices/{DEV}"))["counters"]
    assert (c["filters"], c["filter_ml"], c["filter_brews"]) == (3, 0, 0)
    await post(http, _partial(4, filter_ml=300))  # the newest: in the stored cycle
    c = (await get(http, cloud, f"/v1/devices/{DEV}"))["counters"]
    assert (c["filters"], c["filter_ml"]) == (3, 300)


async def test_fw_is_kept_when_a_report_omits_it(cloud, http):
    await post(http, rep(1, 1))
    await post(http, _partial(2, brews_total=2))
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["fw"] == "0.1.0" and dev["counters"]["brews_total"] == 2


async def _post_kid(http: aiohttp.ClientSession, report: dict[str, Any], key: str,
                    kid: str | None) -> int:
    path, body, headers = auth.signed_report(DEV, key, report)
    if kid:
        headers[P.KEY_HEADER] = kid
    async with http.post(path, data=body, headers=headers) as r:
        return r.status


async def test_keys_rotate_with_an_overlap(cloud, http, clock):
    new = auth.new_key()
    await put(http, cloud, f"/v1/admin/devices/{DEV}", {"key": new, "key_id": "k2",
                                                         "overlap_s": 86400})
    assert await _post_kid(http, rep(1, 1), KEY, None) == 200  # the old key, as provisioned
    assert await _post_kid(http, rep(2, 2), new, "k2") == 200  # the new one, with its id
    assert await _post_kid(http, rep(3, 3), new, None) == 401  # the id says which key
    clock.t += 86401
    assert await _post_kid(http, rep(4, 4), KEY, None) == 401  # the overlap is over
    assert await _post_kid(http, rep(5, 5), new, "k2") == 200
    async with http.put(f"/v1/admin/devices/{DEV}", json={"key": new, "key_id": "a b"},
                        headers=cloud.admin_headers) as r:
        assert r.status == 400


async def test_a_restored_cloud_numbers_its_config_above_the_devices(cloud, http):
    cloud.ledger.set_config(DEV, {"lead_days": 9})  # version 1: as restored from a backup
    status, reply = await post(http, rep(1, 1, config={"applied": 5}))
    assert status == 200 and reply["config"]["version"] == 6  # forward: the device takes it
    assert reply["config"]["settings"] == {"lead_days": 9}


async def test_a_new_plan_does_not_reprice_the_past(cloud, http, clock):
    # T0 is 2026-03-10: January and February are the past.
    await usage(http, {"2026-01-10": 10, "2026-02-10": 10})
    await put(http, cloud, f"/v1/admin/devices/{DEV}/plan", {"price_per_brew": 0.35})
    new = await put(http, cloud, f"/v1/admin/devices/{DEV}/plan", {"price_per_brew": 0.50})
    assert new["start"] == "2026-04-01"  # by default from next month
    async with http.put(f"/v1/admin/devices/{DEV}/plan", headers=cloud.admin_headers,
                        json={"price_per_brew": 0.1, "start": "2026-02-01"}) as r:
        assert r.status == 409  # would reprice February
    async with http.put(f"/v1/admin/devices/{DEV}/plan", headers=cloud.admin_headers,
                        json={"price_per_brew": 0.5, "currency": "USD"}) as r:
        # a plan, but the device is billed in EUR: its state refuses it, not the schema
        assert r.status == 409 and "billed in EUR" in (await r.json())["error"]
    clock.t = datetime(2026, 4, 5, tzinfo=UTC).timestamp()
    status, _ = await post(http, rep(2, days=[{"day": dn("2026-04-02"), "brews_total": 4}]))
    assert status == 200
    inv = await get(http, cloud, f"/v1/devices/{DEV}/invoice",
                    **{"from": "2026-01-01", "to": "2026-04-30"})
    assert [(m["month"], m["brews"], m["amount_cents"]) for m in inv["months"]] == [
        ("2026-01", 10, 350), ("2026-02", 10, 350), ("2026-03", 0, 0), ("2026-04", 4, 200)]
    assert inv["total_cents"] == 900 and inv["plan"]["price_per_brew_cents"] == 50


async def test_closed_months_keep_their_lines_and_late_usage_is_an_adjustment(
        cloud, http, clock):
    await put(http, cloud, f"/v1/admin/devices/{DEV}/plan", {"price_per_brew": 0.35})
    await post(http, rep(1, days=[{"day": dn("2026-03-05"), "brews_total": 10}]))
    clock.t = datetime(2026, 4, 5, tzinfo=UTC).timestamp()  # March closed on April 3 ...
    inv = await get(http, cloud, f"/v1/devices/{DEV}/invoice",
                    **{"from": "2026-03-01", "to": "2026-03-31"})
    assert inv["months"][0]["closed"] and inv["adjustments"] == []
    # ... so 3 brews of March that arrive late are an adjustment, not a changed line.
    await post(http, rep(2, days=[{"day": dn("2026-03-05"), "brews_total": 13}]))
    inv = await get(http, cloud, f"/v1/devices/{DEV}/invoice",
                    **{"from": "2026-03-01", "to": "2026-03-31"})
    assert [(m["brews"], m["amount_cents"]) for m in inv["months"]] == [(10, 350)]
    assert [(a["month"], a["brews"], a["amount_cents"]) for a in inv["adjustments"]] == \
        [("2026-03", 3, 105)]
    assert inv["brews"] == 13 and inv["total_cents"] == 13 * 35


def test_the_ledger_and_sqlites_files_beside_it_are_0600_from_the_first_byte(tmp_path,
                                                                             no_narrowing):
    db = tmp_path / "ledger.db"
    ledger = Ledger(db)
    ledger.add_device(DEV, KEY)  # a write: the WAL and its index exist now
    siblings = [tmp_path / f"ledger.db{s}" for s in ("-wal", "-shm")]
    for f in (db, *siblings):
        assert f.stat().st_mode & 0o777 == 0o600, f
    ledger.close()


def test_a_ledger_from_before_is_narrowed_to_its_owner_when_opened(tmp_path):
    db = tmp_path / "ledger.db"
    Ledger(db).close()
    for f in tmp_path.iterdir():
        f.chmod(0o644)  # as a cloud before this one left it (sqlite's default mode)
    ledger = Ledger(db)
    ledger.add_device(DEV, KEY)
    assert {f.name: f.stat().st_mode & 0o777 for f in tmp_path.iterdir()} == {
        "ledger.db": 0o600, "ledger.db-wal": 0o600, "ledger.db-shm": 0o600}
    ledger.close()
