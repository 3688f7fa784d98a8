"""The cloud trusts nothing a report tells it (issue 13, the cloud's side): malformed
signatures, a locked or failing ledger, the seq floor and a device that goes backwards after
a 409, the owner's rules on orders, desired settings the device could not take, bounded
replies, paged and future-dated history, and the per-device quotas. Each reproduction of the
issue is a test here, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from brewmeter.cloud import CloudServer, Ledger, auth
from brewmeter.cloud.ledger import SEQ_KEEP, SeqConflict
from test_cloud import DEV, KEY, Clock, get, post, rep


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cloud(clock: Clock, tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db", now=clock, busy_timeout_s=0.2)
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

async def test_locked_ledger_is_503_with_retry_after(cloud, http):
    other = sqlite3.connect(cloud.ledger.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        status_headers = []
        path, body, headers = auth.signed_report(DEV, KEY, rep(1, 3))
        async with http.post(path, data=body, headers=headers) as r:
            status_headers.append((r.status, r.headers.get("Retry-After")))
            assert "nothing was stored" in (await r.json())["error"]
        async with http.put(f"/v1/admin/devices/{DEV}/config", json={"settings": {}},
                            headers=cloud.admin_headers) as r:
            status_headers.append((r.status, r.headers.get("Retry-After")))
        assert status_headers == [(503, "2"), (503, "2")]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (await post(http, rep(1, 3)))[0] == 200  # the device's retry goes through
    assert cloud.ledger.device(DEV)["counters"]["brews_total"] == 3


class FailingCommit:
    """The ledger's connection, whose next COMMIT fails (a full disk, an I/O error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
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
    real = cloud.ledger.db
    cloud.ledger.db = FailingCommit(real)  # type: ignore[assignment]
    try:
        status, err = await post(http, rep(2, 5, events=[{"id": 1, "kind": "service"}]))
        assert status == 500 and "nothing" in err["error"]
        assert not real.in_transaction  # rolled back, not left open for the next report
    finally:
        cloud.ledger.db = real
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


async def test_an_order_id_that_is_not_its_item_and_cycle_is_400(cloud, http):
    bad = {**order(1, "coffee", 3), "order": "coffee-4"}
    status, err = await post(http, rep(1, 1, events=[bad]))
    assert status == 400 and "coffee-3" in err["error"]
