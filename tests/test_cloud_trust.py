"""The cloud trusts nothing a report tells it (issue 13, the cloud's side): malformed
signatures, a locked or failing ledger, the seq floor and a device that goes backwards after
a 409, the owner's rules on orders, desired settings the device could not take, bounded
replies, paged and future-dated history, and the per-device quotas. Each reproduction of the
issue is a test here, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest
from brewmeter.cloud import CloudServer, Ledger, auth
from brewmeter.cloud.db import PostgresDatabase, SqliteDatabase
from brewmeter.cloud.ledger import SEQ_KEEP, SeqConflict
from brewmeter.cloud.quota import Quota, take
from brewmeter.cloud.shared import protocol
from test_cloud import DEV, KEY, T0, Clock, get, post, rep


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cloud(clock: Clock, ledger_at):
    ledger = Ledger(ledger_at, now=clock, busy_timeout_s=0.2)
    ledger.add_device(DEV, KEY)
    async with CloudServer(ledger) as c:
        yield c
    ledger.close()


# -- signatures ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", ["é" * 64, "zz", "0" * 63, "0" * 65, " ", "ａ" * 64])
async def test_any_malformed_signature_is_401(cloud, http, sig):
    path, body, headers = auth.signed_report(DEV, KEY, rep(1, 3))
    raw = {**headers, auth.SIG_HEADER: sig.encode().decode("latin-1")}
    async with http.post(path, data=body, headers=raw) as r:
        assert r.status == 401, await r.text()
        assert "signature" in (await r.json())["error"]
    assert cloud.ledger.stats()["reports"] == 0


async def test_non_ascii_seq_header_is_401(cloud, http):
    path, body, headers = auth.signed_report(DEV, KEY, rep(1, 3))
    raw = {**headers, auth.SEQ_HEADER: "１".encode().decode("latin-1")}
    async with http.post(path, data=body, headers=raw) as r:
        assert r.status == 401


# -- a locked or failing ledger ----------------------------------------------------------------

@contextmanager
def held(ledger: Ledger) -> Iterator[None]:
    """Another process holds the ledger's write lock (SQLite), or the device's row
    (PostgreSQL: what every write to the device locks first), until the end."""
    db = ledger.db
    if isinstance(db, PostgresDatabase):
        import psycopg

        other: Any = psycopg.connect(db.url, autocommit=True)
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM devices WHERE id=%s FOR UPDATE", (DEV,))
    else:
        other = sqlite3.connect(ledger.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def in_transaction(conn: Any) -> bool:
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    return conn.info.transaction_status != 0  # psycopg: not idle


async def test_locked_ledger_is_503_with_retry_after(cloud, http):
    with held(cloud.ledger):
        status_headers = []
        path, body, headers = auth.signed_report(DEV, KEY, rep(1, 3))
        async with http.post(path, data=body, headers=headers) as r:
            status_headers.append((r.status, r.headers.get("Retry-After")))
            assert "nothing was stored" in (await r.json())["error"]
        async with http.put(f"/v1/admin/devices/{DEV}/config", json={"settings": {}},
                            headers=cloud.admin_headers) as r:
            status_headers.append((r.status, r.headers.get("Retry-After")))
        assert status_headers == [(503, "2"), (503, "2")]
    assert (await post(http, rep(1, 3)))[0] == 200  # the device's retry goes through
    assert cloud.ledger.device(DEV)["counters"]["brews_total"] == 3


class FailingCommit:
    """The ledger's connection, whose next COMMIT fails (a full disk, an I/O error)."""

    def __init__(self, db: Any) -> None:
        self.db, self.fail = db, True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.fail:
            self.fail = False
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


async def test_failed_commit_is_rolled_back(cloud, http):
    assert (await post(http, rep(1, 1)))[0] == 200
    before = cloud.ledger.dump()
    # The connection: SQLite's own, or the psycopg one the PostgreSQL layer wraps.
    holder = cloud.ledger.db if isinstance(cloud.ledger.db, SqliteDatabase) \
        else cloud.ledger.db.conn
    real = holder.conn
    holder.conn = FailingCommit(real)  # type: ignore[assignment]
    try:
        status, err = await post(http, rep(2, 5, events=[{"id": 1, "kind": "service"}]))
        assert status == 500 and "nothing" in err["error"]
        assert not in_transaction(real)  # rolled back, not left open for the next report
    finally:
        holder.conn = real
    assert cloud.ledger.dump() == before
    assert (await post(http, rep(2, 5)))[0] == 200


# -- seq: the floor, and a device that goes backwards after a 409 ----------------------------

def test_seq_hashes_are_pruned_below_the_floor(clock):
    ledger = Ledger(now=clock)
    ledger.add_device(DEV, KEY)
    for seq in range(1, 2 * SEQ_KEEP + 2, 7):
        ledger.apply_report(DEV, auth.encode_report(rep(seq, seq)))
    last = ledger.device(DEV)["last_seq"]
    (kept, lowest) = ledger.db.execute("SELECT count(*), min(seq) FROM reports").fetchone()
    assert lowest > last - SEQ_KEEP and kept <= SEQ_KEEP // 7 + 1
    # A report below the floor cannot be told from a replay: 409 with the highest seq, and
    # nothing applied (its counters arrive with the next report anyway).
    with pytest.raises(SeqConflict) as e:
        ledger.apply_report(DEV, auth.encode_report(rep(lowest - 7, 5 * SEQ_KEEP)))
    assert e.value.highest == last
    assert ledger.device(DEV)["counters"]["brews_total"] == last
    ledger.close()


async def test_409_then_a_device_that_goes_backwards_is_flagged(cloud, http):
    """Repro: after a flash loss the device ignored the 409's seq and went on within its own
    range; its reports were taken as old ones without a word. Now they are flagged."""
    for seq in range(2, 21, 2):
        assert (await post(http, rep(seq, seq, config={"applied": 1})))[0] == 200
    status, err = await post(http, rep(4, 1, boot=1, config={"applied": 0}))  # lost state
    assert status == 409 and err["seq"] == 20
    # A device that follows the document goes on from 21: no flag.
    assert (await post(http, rep(21, 21, config={"applied": 1})))[0] == 200
    assert (await get(http, cloud, f"/v1/devices/{DEV}"))["flags"] == []
    # One that skips ahead within its own range (seq 5, not seen before) is flagged.
    status, err = await post(http, rep(5, 1, boot=1, config={"applied": 0}))
    assert status == 200
    flags = (await get(http, cloud, f"/v1/devices/{DEV}"))["flags"]
    assert [(f["kind"], f["reported"], f["conflict_seq"]) for f in flags] == \
        [("seq_backwards", 5, 20)]


# -- the owner's rules on orders ---------------------------------------------------------------

def order(eid: int, item: str, cycle: int, ask: int = 0) -> dict[str, Any]:
    return {"id": eid, "kind": "order_requested", "order": f"{item}-{cycle}", "item": item,
            "cycle": cycle, "ask": ask, "pct": 9, "days": 2, "wall": 1773144000}


async def orders_now(http, cloud) -> dict[str, tuple[str, str | None]]:
    out = await get(http, cloud, f"/v1/devices/{DEV}/orders")
    return {o["order"]: (o["status"], o["reason"]) for o in out["orders"]}


async def test_cloud_enforces_the_owners_rules(cloud, http):
    """Repro: one signed report placed 64 orders for an item in no catalogue, although the
    owner's desired config said ask_first=1, orders_month=1."""
    async with http.put(f"/v1/admin/devices/{DEV}/config", headers=cloud.admin_headers,
                        json={"settings": {"ask_first": 1, "orders_month": 1,
                                           "auto_descaler": 0}}) as r:
        assert r.status == 200
    events = [order(i, "gold", i) for i in range(1, 60)]
    events += [order(60, "coffee", 2), order(61, "coffee", 3), order(62, "filter", 1),
               order(63, "descaler", 4), order(64, "tablets", 7)]
    report = rep(1, 3, events=events, config={"applied": 0})
    report["supplies"] = {"coffee": {"cycle": 3, "pct": 9}, "filter": {"cycle": 1},
                          "descaler": {"cycle": 4}}
    status, reply = await post(http, report)
    assert status == 200 and len(reply["ack"]) == 64  # acked: the device does not resend
    got = await orders_now(http, cloud)
    assert len(got) == 64
    assert {st for o, (st, _) in got.items() if o.startswith("gold-")} == {"declined"}
    assert "not in the catalogue" in got["gold-1"][1]
    # The device said ask=0; the owner said ask first: it waits for approval.
    assert got["coffee-3"] == ("needs_approval", None)
    assert got["coffee-2"][0] == "declined" and "current cycle (3)" in got["coffee-2"][1]
    assert got["filter-1"][0] == "declined" and "1 orders a month" in got["filter-1"][1]
    assert got["descaler-4"][0] == "declined" and "by hand" in got["descaler-4"][1]
    assert got["tablets-7"][0] == "declined" and "no cycle" in got["tablets-7"][1]
    assert [o for o, (st, _) in got.items() if st != "declined"] == ["coffee-3"]
    # Next month the cap allows one more.
    cloud.ledger.now.t += 31 * 86400  # type: ignore[attr-defined]
    report = rep(2, 4, events=[order(65, "filter", 2)], config={"applied": 0})
    report["supplies"] = {"filter": {"cycle": 2}}
    assert (await post(http, report))[0] == 200
    assert (await orders_now(http, cloud))["filter-2"] == ("needs_approval", None)


async def test_an_order_id_that_is_not_its_item_and_cycle_is_declined(cloud, http):
    bad = {**order(1, "coffee", 3), "order": "coffee-4"}
    report = rep(1, 1, events=[bad])
    report["supplies"] = {"coffee": {"cycle": 3}}
    status, reply = await post(http, report)
    assert status == 200 and reply["orders"] == {"coffee-4": "declined"}
    st, reason = (await orders_now(http, cloud))["coffee-4"]
    assert st == "declined" and "not the order id of coffee's cycle 3" in reason


# -- desired settings the device could not take; bounded replies -------------------------------

@pytest.mark.parametrize("settings, status, why", [
    ({"s" * 250: 1}, 400, "unknown setting"),      # repro: its rejection reason was too long
    ({"lead_days": "x" * 5000}, 400, "lead_days"),  # repro: a reply over the device's limit
    ({"lead_days": 0}, 400, "lead_days must be an integer in 1..60"),
    ({"ask_first": True}, 400, "ask_first"),
    ({"coffee_use": {"espresso": 1, "lungo": 1, "a": 1, "b": 1, "c": 1}}, 400, "at most 4"),
    # Valid for some device, not this one: not one of its brew kinds.
    ({"coffee_use": {"ristretto": 2}}, 409, "no brew kind 'ristretto' (its kinds: espresso"),
])
async def test_desired_settings_the_device_would_refuse_are_refused(cloud, http, settings,
                                                                    status, why):
    first = rep(1, 3)
    first["counters"]["brews"] = {"espresso": 2, "lungo": 1}  # the device's brew kinds
    assert (await post(http, first))[0] == 200
    before = cloud.ledger.dump()
    async with http.put(f"/v1/admin/devices/{DEV}/config", json={"settings": settings},
                        headers=cloud.admin_headers) as r:
        assert r.status == status
        err = (await r.json())["error"]
    assert why in err and len(err) < 300
    assert cloud.ledger.dump() == before
    # What the device takes is taken; the reply carries it.
    good = {"coffee_use": {"espresso": 2, "lungo": 3}, "lead_days": 7}
    async with http.put(f"/v1/admin/devices/{DEV}/config", json={"settings": good},
                        headers=cloud.admin_headers) as r:
        assert r.status == 200
    _, reply = await post(http, rep(2, 3))
    assert reply["config"] == {"version": 1, "settings": good}


async def test_a_reply_never_exceeds_the_devices_limit(cloud, http):
    """The orders of one report's reply are paged: what does not fit comes in the next."""
    item = "abcdefghijklmnopqrstuvwxyzabcdef"  # 32 letters
    events = [order(i, item, 10**14 + i) for i in range(64)]
    path, body, headers = auth.signed_report(DEV, KEY, rep(1, 1, events=events))
    async with http.post(path, data=body, headers=headers) as r:
        assert r.status == 200
        raw = await r.read()
    assert len(raw) <= protocol.MAX_REPLY
    first = json.loads(raw)
    assert first["ack"] == list(range(64)) and 0 < len(first["orders"]) < 64
    # The device keeps its open orders with what it heard; the rest are answered next.
    heard = {e["order"]: first["orders"].get(e["order"], "requested") for e in events}
    nxt = rep(2, 1)
    nxt["orders"] = dict(list(heard.items())[-protocol.MAX_ORDERS:])
    _, second = await post(http, nxt)
    missing = {o for o, st in nxt["orders"].items() if st == "requested"}
    assert missing and set(second["orders"]) == missing


def test_reply_paging_keeps_ack_seq_and_config():
    from brewmeter.cloud.ledger import CONFIG_MAX, Reply

    config = {"version": protocol.MAX_INT, "settings": {"x": "y" * (CONFIG_MAX - 60)}}
    reply = Reply(ack=[protocol.MAX_INT - i for i in range(protocol.MAX_EVENTS)],
                  seq=protocol.MAX_INT, config=config,
                  orders={f"coffee-{10**14 + i}": "declined" for i in range(80)},
                  refill={f"item{i:028d}": 10**14 for i in range(100)})
    data = reply.encode()
    assert len(data) <= protocol.MAX_REPLY
    out = json.loads(data)
    assert out["ack"] == reply.ack and out["seq"] == reply.seq and out["config"] == config
    small = Reply(ack=[1], seq=1, config=None, refill={f"item{i}": 3 for i in range(50)})
    assert json.loads(small.encode())["refill"] == small.refill  # fits: whole


def test_the_largest_valid_settings_fit_any_reply():
    from brewmeter.cloud.ledger import CONFIG_MAX, _compact, check_desired

    largest: dict[str, Any] = {
        k: protocol.limits(k)[1] for k in protocol.SETTINGS.split()[::4]}
    for k, (_, hi) in protocol.PER_KIND.items():
        largest[k] = {f"k{i}".ljust(protocol.MAX_NAME, "x"): hi for i in range(protocol.MAX_KINDS)}
    assert check_desired(largest) == largest
    assert len(_compact({"version": protocol.MAX_INT, "settings": largest})) <= CONFIG_MAX


# -- history: paged, folded, future-dated; lifetime brews reconciled --------------------------

DAY0 = int(T0 // 86400)


async def days_of(http, cloud) -> dict[int, tuple[int, bool]]:
    out = await get(http, cloud, f"/v1/devices/{DEV}/days")
    return {d["day"]: (d["brews_total"], d["estimated"]) for d in out["days"]}


async def test_offline_past_the_history_limit_syncs_in_pages(cloud, http):
    """Repro: offline 70 days with daily use, every report got 400 (more than 64 buckets)
    and the cloud billed 68 brews of 1002. The device now pages its buckets, oldest first."""
    per_day = {DAY0 - 70 + i: 10 + i % 7 for i in range(71)}  # 70 days offline and today
    total = sum(per_day.values())
    buckets = [{"day": d, "brews_total": n} for d, n in sorted(per_day.items())]
    too_many = rep(1, total, days=buckets[:protocol.MAX_DAYS + 1])
    status, err = await post(http, too_many)
    assert status == 400 and str(protocol.MAX_DAYS) in err["error"]
    status, _ = await post(http, rep(2, total, days=buckets[:protocol.MAX_DAYS]))
    assert status == 200
    # Between pages the lifetime counters are ahead of the buckets: the difference is an
    # estimated bucket on the cloud's day, so an invoice made now is still complete.
    got = await days_of(http, cloud)
    assert sum(n for n, _ in got.values()) == total
    assert got[DAY0] == (sum(n for d, n in per_day.items() if d >= DAY0 - 70 + 64), True)
    status, _ = await post(http, rep(3, total, days=buckets[protocol.MAX_DAYS:]))
    assert status == 200
    assert await days_of(http, cloud) == {d: (n, False) for d, n in per_day.items()}
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert dev["counters"]["brews_total"] == total and dev["flags"] == []


async def test_a_bucket_far_ahead_is_flagged_and_not_billed(cloud, http):
    """Repro: a clock 3 years ahead put brews in the future year (accepted up to 2517); the
    invoice for the real months was 0. Now such buckets are flagged, not billed on their
    day, and the brews they hold are billed as estimated on the cloud's day."""
    ahead = DAY0 + 3 * 365
    buckets = [{"day": ahead + i, "brews_total": 10} for i in range(20)]
    buckets.append({"day": DAY0 + protocol.DAY_AHEAD, "brews_total": 1})  # tomorrow: fine
    assert (await post(http, rep(1, 201, days=buckets)))[0] == 200
    got = await days_of(http, cloud)
    assert got == {DAY0: (200, True), DAY0 + 1: (1, False)}
    dev = await get(http, cloud, f"/v1/devices/{DEV}")
    assert [(f["kind"], f["day"], f["buckets"]) for f in dev["flags"]] == \
        [("future_bucket", ahead + 19, 20)]
    async with http.put(f"/v1/admin/devices/{DEV}/plan", json={"price_per_brew": 0.5},
                        headers=cloud.admin_headers) as r:
        assert r.status == 200
    inv = await get(http, cloud, f"/v1/devices/{DEV}/invoice",
                    **{"from": "2026-03-01", "to": "2026-03-31"})
    assert (inv["brews"], inv["total_cents"], inv["months"][0]["estimated_brews"]) == \
        (201, 10050, 200)
    future = await get(http, cloud, f"/v1/devices/{DEV}/invoice",
                       **{"from": "2029-01-01", "to": "2029-12-31"})
    assert future["brews"] == 0


async def test_a_clock_far_ahead_does_not_place_undated_buckets(cloud, http):
    loose = {"boot": 5, "at_ms": 1000, "brews_total": 4}
    wrong = int(T0) + 3 * 365 * 86400
    assert (await post(http, rep(1, 4, uptime_ms=5000, clock=wrong, days=[loose])))[0] == 200
    out = await get(http, cloud, f"/v1/devices/{DEV}/days")
    assert out["unplaced"] == [{"boot": 5, "at_ms": 1000, "brews_total": 4}]
    assert await days_of(http, cloud) == {}  # waiting: a newer boot or a sane clock


async def test_folded_history_is_placed_on_its_last_day_as_estimated(cloud, http):
    buckets = [{"fold": 1, "last": DAY0 - 100, "brews_total": 500},
               {"fold": 2, "last": 0, "brews_total": 40},  # no day known: the cloud's day
               {"day": DAY0 - 99, "brews_total": 7}]
    assert (await post(http, rep(1, 547, days=buckets)))[0] == 200
    assert await days_of(http, cloud) == {DAY0 - 100: (500, True), DAY0 - 99: (7, False),
                                          DAY0: (40, True)}
    # Sent again (not yet acknowledged, or a retry under a new seq): kept once.
    assert (await post(http, rep(2, 547, days=buckets[:2])))[0] == 200
    assert sum(n for n, _ in (await days_of(http, cloud)).values()) == 547


# -- per-device quotas -------------------------------------------------------------------------

async def test_report_rate_quota_is_429_with_retry_after(cloud, http, clock):
    q = Quota()
    for seq in range(1, q.reports_burst + 1):
        assert (await post(http, rep(seq, seq)))[0] == 200
    before = cloud.ledger.dump()
    path, body, headers = auth.signed_report(DEV, KEY, rep(q.reports_burst + 1, 999))
    async with http.post(path, data=body, headers=headers) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "60"
    assert cloud.ledger.dump() == before
    cloud.ledger.add_device("bm-other", KEY)  # the quota is per device
    assert (await post(http, rep(1, 1), dev="bm-other"))[0] == 200
    clock.t += 60
    assert (await post(http, rep(q.reports_burst + 1, 999)))[0] == 200


async def test_rows_quota_is_429_with_retry_after(clock):
    ledger = Ledger(now=clock)
    ledger.add_device(DEV, KEY)
    q = Quota(rows_burst=1500, rows_per_day=86_400)  # a row a second
    wide = {f"f{i}": 1 for i in range(20)}
    big = rep(1, 1, days=[{"day": DAY0 - i, **wide} for i in range(protocol.MAX_DAYS)])
    async with CloudServer(ledger, quota=q) as c, aiohttp.ClientSession(c.url) as s:
        assert (await post(s, big))[0] == 200  # 64 x 21 rows and a few
        big["seq"] = 2
        path, body, headers = auth.signed_report(DEV, KEY, big)
        async with s.post(path, data=body, headers=headers) as r:
            assert r.status == 429
            wait = int(r.headers["Retry-After"])
        assert 1000 < wait < 1400
        clock.t += wait
        assert (await post(s, big))[0] == 200
    ledger.close()


def test_quota_take_is_a_token_bucket():
    q = Quota(reports_burst=2, reports_per_day=24, rows_burst=100, rows_per_day=2400)
    lv, w = take(q, None, 0.0, 10)
    lv, w2 = take(q, lv, 0.0, 10)
    lv, w3 = take(q, lv, 0.0, 10)
    assert (w, w2, w3) == (0, 0, 3600)  # a report an hour
    assert take(q, lv, 3600.0, 10)[1] == 0
    assert take(q, None, 0.0, 101)[1] == 36  # rows: 100 a day... 1 more row, 36 s


async def test_an_error_reply_is_within_the_devices_limit(cloud, http):
    """A bad report quoting a 10,000-character name is refused with a short reason."""
    bad = rep(1, 1)
    bad["counters"]["x" * 10_000] = 1
    path, body, headers = auth.signed_report(DEV, KEY, bad)
    async with http.post(path, data=body, headers=headers) as r:
        assert r.status == 400
        raw = await r.read()
    assert len(raw) < protocol.MAX_REPLY
    assert json.loads(raw)["error"].startswith("counters: bad field name 'xxx")
