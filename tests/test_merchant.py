"""The emulated cloud as the merchant of the device's replenishment orders: one order per
(device, order id) whatever the retries, ask-first approval, shipping and delivery on the
ledger's (virtual) clock, stock-outs, orders the cloud never got, the consumables' levels
(newest report per field) and the owner's refills; through the Python API and over HTTP."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from brewmeter import cloud as cloud_pkg
from brewmeter.cloud import BadReport, CloudServer, Ledger, Merchant, StateConflict, auth
from brewmeter.cloud.ledger import UnknownDevice, UnknownOrder
from brewmeter.cloud.merge import Merge

DEV = "bm-240ac4000001"
KEY = "11" * 32
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
DAY = 86_400.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def order(eid: int, item: str = "coffee", cycle: int = 3, ask: int = 0) -> dict[str, Any]:
    """An order_requested event, as the firmware sends it."""
    return {"id": eid, "kind": "order_requested", "order": f"{item}-{cycle}", "item": item,
            "cycle": cycle, "ask": ask, "pct": 9, "days": 4, "wall": 1767600000}


def rep(seq: int, *, events: list[dict[str, Any]] | None = None,
        orders: dict[str, str] | None = None,
        supplies: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A report; unless `supplies` is given, it shows each ordered item in the order's cycle
    (as the device does: the cloud places an order only for the cycle the device reports)."""
    body: dict[str, Any] = {"seq": seq, "boot": 5, "uptime_ms": 1000 * seq, "clock": 0,
                            "counters": {"brews_total": seq}, "events": events or []}
    if orders is not None:
        body["orders"] = orders
    if supplies is None:
        supplies = {e["item"]: {"cycle": e["cycle"]} for e in events or ()
                    if e["kind"] == "order_requested"}
    if supplies:
        body["supplies"] = supplies
    return body


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(clock: Clock, memory_at):
    led = Ledger(memory_at, now=clock)
    led.add_device(DEV, KEY)
    yield led
    led.close()


def send(ledger: Ledger, seq: int, **kw: Any) -> dict[str, Any]:
    """Apply a report; the reply's JSON."""
    return ledger.apply_report(DEV, auth.encode_report(rep(seq, **kw))).json()


def status(ledger: Ledger, oid: str = "coffee-3") -> str:
    (o,) = [o for o in ledger.orders(DEV) or [] if o["order"] == oid]
    return o["status"]


# -- dedupe ----------------------------------------------------------------------------------

def test_one_order_whatever_the_retries(ledger, clock):
    first = rep(1, events=[order(17)], orders={"coffee-3": "requested"})
    reply = ledger.apply_report(DEV, auth.encode_report(first)).json()
    assert reply == {"ack": [17], "seq": 1, "config": None, "orders": {"coffee-3": "placed"}}
    # The same bytes again (a lost reply): the same answer, nothing new.
    before = ledger.dump()
    assert ledger.apply_report(DEV, auth.encode_report(first)).json() == reply
    assert ledger.dump() == before
    # A reboot re-sends the request under a new event id, now in ask-first mode: still the
    # one order, decided when it first arrived.
    clock.t += 60
    reply = send(ledger, 1_000_001, events=[order(40, ask=1)], orders={"coffee-3": "requested"})
    assert reply["ack"] == [40] and reply["orders"] == {"coffee-3": "placed"}
    (o,) = ledger.orders(DEV)
    assert (o["order"], o["item"], o["cycle"], o["status"], o["ask"]) == \
        ("coffee-3", "coffee", 3, "placed", False)
    assert o["requested_at"] == o["placed_at"] == iso(T0)
    assert [e["id"] for e in ledger.events(DEV)] == [17, 40]  # both events are kept
    # Once the device has heard the status, replies leave it out.
    assert "orders" not in send(ledger, 1_000_002, orders={"coffee-3": "placed"})


def test_an_order_only_in_an_event_is_always_answered(ledger):
    send(ledger, 1, events=[order(1)])
    # The event again (its ack was lost): answered even though nothing changed ...
    assert send(ledger, 2, events=[order(1)])["orders"] == {"coffee-3": "placed"}
    # ... unless the report's orders map already says so.
    assert "orders" not in send(ledger, 3, events=[order(1)], orders={"coffee-3": "placed"})


# -- ask first, shipping, delivery -------------------------------------------------------------

def test_ask_first_waits_then_ships_and_arrives(ledger, clock):
    reply = send(ledger, 1, events=[order(1, ask=1)], orders={"coffee-3": "requested"})
    assert reply["orders"] == {"coffee-3": "needs_approval"}
    clock.t += 5 * DAY  # waiting for the owner does not ship it
    assert send(ledger, 2, orders={"coffee-3": "needs_approval"}).get("orders") is None
    assert status(ledger) == "needs_approval"

    approved_at = clock.t
    o = ledger.approve(DEV, "coffee-3", True)
    assert (o["status"], o["placed_at"], o["shipped_at"]) == ("placed", iso(approved_at), None)
    with pytest.raises(StateConflict):
        ledger.approve(DEV, "coffee-3", True)  # only from needs_approval
    assert send(ledger, 3, orders={"coffee-3": "needs_approval"})["orders"] == \
        {"coffee-3": "placed"}

    clock.t = approved_at + DAY - 1  # ship_after_s (1 day) after the approval
    assert status(ledger) == "placed"
    clock.t += 1
    assert status(ledger) == "shipped"
    assert send(ledger, 4, orders={"coffee-3": "placed"})["orders"] == {"coffee-3": "shipped"}
    clock.t += 2 * DAY - 1  # deliver_after_s (2 days) after shipping
    assert status(ledger) == "shipped"
    clock.t += 1
    (o,) = ledger.orders(DEV)
    assert o["status"] == "delivered"
    assert (o["requested_at"], o["placed_at"], o["shipped_at"], o["delivered_at"],
            o["declined_at"]) == (iso(T0), iso(approved_at), iso(approved_at + DAY),
                                  iso(approved_at + 3 * DAY), None)
    assert send(ledger, 5, orders={"coffee-3": "shipped"})["orders"] == \
        {"coffee-3": "delivered"}


def test_the_merchants_delays_are_configurable(clock):
    ledger = Ledger(now=clock, merchant=Merchant(ship_after_s=3600, deliver_after_s=7200))
    ledger.add_device(DEV, KEY)
    send(ledger, 1, events=[order(1)])
    clock.t += 3600
    assert status(ledger) == "shipped"
    clock.t += 7200
    assert status(ledger) == "delivered"


def test_owner_declines(ledger, clock):
    send(ledger, 1, events=[order(1, "tablets", 0, ask=1)])
    clock.t += 600
    o = ledger.approve(DEV, "tablets-0", False)
    assert (o["status"], o["declined_at"], o["placed_at"]) == ("declined", iso(T0 + 600), None)
    with pytest.raises(StateConflict):
        ledger.approve(DEV, "tablets-0", True)
    clock.t += 30 * DAY  # a declined order never ships
    assert status(ledger, "tablets-0") == "declined"
    reply = send(ledger, 2, orders={"tablets-0": "needs_approval"})
    assert reply["orders"] == {"tablets-0": "declined"}
    with pytest.raises(UnknownOrder):
        ledger.approve(DEV, "tablets-9", True)
    with pytest.raises(UnknownDevice):
        ledger.approve("bm-nobody", "tablets-0", True)


def test_out_of_stock_is_declined(clock):
    ledger = Ledger(now=clock, merchant=Merchant(out_of_stock={"descaler"}))
    ledger.add_device(DEV, KEY)
    reply = send(ledger, 1, events=[order(1, "descaler", 2, ask=1), order(2, "filter", 1)])
    assert reply["orders"] == {"descaler-2": "declined", "filter-1": "placed"}
    with pytest.raises(StateConflict):
        ledger.approve(DEV, "descaler-2", True)


def test_an_order_the_cloud_never_got_is_unknown(ledger):
    # The device sent its request in a report whose reply it saw, but the cloud lost it
    # (or the event was acked under a clashing id): the device asks again on "unknown".
    reply = send(ledger, 1, orders={"filter-2": "requested", "coffee-5": "placed"})
    assert reply["orders"] == {"filter-2": "unknown", "coffee-5": "unknown"}
    assert ledger.orders(DEV) == []
    reply = send(ledger, 2, events=[order(9, "filter", 2)], orders={"filter-2": "requested"})
    assert reply["orders"] == {"filter-2": "placed"}


# -- supplies and refills ----------------------------------------------------------------------

def test_supplies_keep_the_newest_report_per_item(ledger):
    send(ledger, 2, supplies={"coffee": {"cycle": 4, "pct": 90, "days": 30},
                              "filter": {"cycle": 1, "pct": 60, "days": 40}})
    # An older report arriving late: its coffee is stale, its descaler is the only one yet.
    send(ledger, 1, supplies={"coffee": {"cycle": 3, "pct": 5, "days": 1},
                              "descaler": {"cycle": 0, "pct": 70}})
    assert ledger.device(DEV)["supplies"] == {
        "coffee": {"cycle": 4, "pct": 90, "days": 30},
        "descaler": {"cycle": 0, "pct": 70},
        "filter": {"cycle": 1, "pct": 60, "days": 40}}
    # Newer values replace older ones, lower or not; a sparse item changes only its fields,
    # and days null drops the forecast.
    send(ledger, 3, supplies={"coffee": {"pct": 80}, "filter": {"pct": 55, "days": None}})
    sup = ledger.device(DEV)["supplies"]
    assert sup["coffee"] == {"cycle": 4, "pct": 80, "days": 30}
    assert sup["filter"] == {"cycle": 1, "pct": 55}


def test_refill_is_sent_until_the_cycle_grows(ledger):
    with pytest.raises(StateConflict):
        ledger.refill(DEV, "filter")  # no cycle of it seen yet
    send(ledger, 1, supplies={"filter": {"cycle": 2, "pct": 3, "days": 1}})
    assert "refill" not in send(ledger, 2)
    assert ledger.refill(DEV, "filter") == {"item": "filter", "cycle": 2}
    assert ledger.device(DEV)["refill"] == {"filter": 2}
    assert send(ledger, 3)["refill"] == {"filter": 2}
    assert send(ledger, 4, supplies={"filter": {"pct": 2}})["refill"] == {"filter": 2}
    assert send(ledger, 5, supplies={"filter": {"cycle": 2}})["refill"] == {"filter": 2}
    reply = send(ledger, 6, supplies={"filter": {"cycle": 3, "pct": 100}})
    assert "refill" not in reply
    assert ledger.device(DEV)["refill"] == {}
    with pytest.raises(UnknownDevice):
        ledger.refill("bm-nobody", "filter")


# -- malformed and failing reports -------------------------------------------------------------

BAD = [
    {"events": [{**order(1), "order": "Coffee-3"}]},
    {"events": [{**order(1), "order": "coffee3"}]},
    {"events": [{k: v for k, v in order(1).items() if k != "order"}]},
    {"events": [{**order(1), "item": "cof fee"}]},
    {"events": [{**order(1), "cycle": -1}]},
    {"events": [{**order(1), "cycle": "3"}]},
    {"events": [{**order(1), "ask": 2}]},
    {"events": [{**order(1), "ask": True}]},
    {"events": [{k: v for k, v in order(1).items() if k != "ask"}]},
    {"orders": ["coffee-3"]},
    {"orders": {"coffee": "placed"}},
    {"orders": {"coffee-3": 1}},
    {"orders": {f"coffee-{i}": "requested" for i in range(17)}},
    {"supplies": {"coffee": 40}},
    {"supplies": {"coffee": {"pct": 101}}},
    {"supplies": {"coffee": {"cycle": None}}},
    {"supplies": {"coffee": {"litres": 3}}},
    {"supplies": {"bad name": {"pct": 1}}},
]


@pytest.mark.parametrize("extra", BAD)
def test_bad_order_fields_are_refused_and_change_nothing(ledger, extra):
    send(ledger, 1, events=[order(1)], supplies={"coffee": {"cycle": 3, "pct": 50}})
    before = ledger.dump()
    body = {**rep(2, events=[order(5, "filter", 1)]), **extra}
    with pytest.raises(BadReport):
        ledger.apply_report(DEV, auth.encode_report(body))
    assert ledger.dump() == before


def test_a_failing_report_leaves_no_order_behind(ledger, monkeypatch):
    send(ledger, 1)
    before = ledger.dump()

    def boom(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Merge, "_supplies", boom)  # after the order was written
    with pytest.raises(RuntimeError):
        send(ledger, 2, events=[order(1)], supplies={"coffee": {"cycle": 3}})
    assert ledger.dump() == before and ledger.orders(DEV) == []
    monkeypatch.undo()
    assert send(ledger, 2, events=[order(1)])["orders"] == {"coffee-3": "placed"}


# -- over HTTP ---------------------------------------------------------------------------------

@pytest.fixture
async def cloud(clock: Clock, ledger_at):
    led = Ledger(ledger_at, now=clock, merchant=Merchant(out_of_stock={"descaler"}))
    led.add_device(DEV, KEY)
    async with CloudServer(led) as c:
        yield c
    led.close()


async def post(http: aiohttp.ClientSession, report: dict[str, Any]) -> tuple[int, Any]:
    path, body, headers = auth.signed_report(DEV, KEY, report)
    async with http.post(path, data=body, headers=headers) as r:
        return r.status, await r.json()


async def admin(http: aiohttp.ClientSession, cloud: CloudServer, method: str, path: str,
                body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.request(method, path, json=body,
                            headers=cloud.admin_headers if headers is None else headers) as r:
        return r.status, await r.json()


async def test_orders_over_http(cloud, http, clock):
    status_, reply = await post(http, rep(1, events=[order(1, ask=1), order(2, "descaler", 0)],
                                          supplies={"coffee": {"cycle": 3, "pct": 9}}))
    assert status_ == 200
    assert reply == {"ack": [1, 2], "seq": 1, "config": None,
                     "orders": {"coffee-3": "needs_approval", "descaler-0": "declined"}}

    _, out = await admin(http, cloud, "GET", f"/v1/devices/{DEV}/orders")
    assert [(o["order"], o["status"]) for o in out["orders"]] == \
        [("coffee-3", "needs_approval"), ("descaler-0", "declined")]
    assert set(out["orders"][0]) == {"order", "item", "cycle", "status", "ask", "requested_at",
                                     "placed_at", "shipped_at", "delivered_at", "declined_at",
                                     "reason"}

    base = f"/v1/admin/devices/{DEV}/orders"
    assert (await admin(http, cloud, "POST", f"{base}/coffee-3/approve", headers={}))[0] == 401
    clock.t += 60
    code, o = await admin(http, cloud, "POST", f"{base}/coffee-3/approve")
    assert code == 200 and (o["status"], o["placed_at"]) == ("placed", iso(T0 + 60))
    code, err = await admin(http, cloud, "POST", f"{base}/coffee-3/decline")
    assert code == 409 and "placed" in err["error"]
    assert (await admin(http, cloud, "POST", f"{base}/descaler-0/approve"))[0] == 409
    assert (await admin(http, cloud, "POST", f"{base}/filter-1/approve"))[0] == 404
    assert (await admin(http, cloud, "POST", "/v1/admin/devices/bm-nobody/orders/coffee-3/"
                        "decline"))[0] == 404
    assert (await admin(http, cloud, "GET", "/v1/devices/bm-nobody/orders"))[0] == 404

    clock.t += DAY
    _, reply = await post(http, rep(2, orders={"coffee-3": "needs_approval"}))
    assert reply["orders"] == {"coffee-3": "shipped"}
    await cloud.restart()  # kept in the ledger file
    _, dev = await admin(http, cloud, "GET", f"/v1/devices/{DEV}")
    assert [(o["order"], o["status"]) for o in dev["orders"]] == \
        [("coffee-3", "shipped"), ("descaler-0", "declined")]
    assert dev["supplies"] == {"coffee": {"cycle": 3, "pct": 9}}


async def test_refill_over_http(cloud, http):
    path = f"/v1/admin/devices/{DEV}/refill"
    code, err = await admin(http, cloud, "POST", path, {"item": "filter"})
    assert code == 409 and "filter" in err["error"]
    await post(http, rep(1, supplies={"filter": {"cycle": 2, "pct": 1, "days": 0}}))
    assert await admin(http, cloud, "POST", path, {"item": "filter"}) == \
        (200, {"item": "filter", "cycle": 2})
    for bad in ({}, {"item": 3}, {"item": "a b"}, {"item": "filter", "x": 1}, ["filter"]):
        assert (await admin(http, cloud, "POST", path, bad))[0] == 400
    assert (await admin(http, cloud, "POST", "/v1/admin/devices/bm-nobody/refill",
                        {"item": "filter"}))[0] == 404
    assert (await admin(http, cloud, "POST", path, {"item": "filter"}, headers={}))[0] == 401
    _, reply = await post(http, rep(2))
    assert reply["refill"] == {"filter": 2}
    _, reply = await post(http, rep(3, supplies={"filter": {"cycle": 3, "pct": 100}}))
    assert "refill" not in reply


async def test_bad_order_event_over_http_is_400(cloud, http):
    before = cloud.ledger.dump()
    code, err = await post(http, rep(1, events=[{**order(1), "ask": 2}]))
    assert code == 400 and "ask" in err["error"]
    assert cloud.ledger.dump() == before


async def test_cloud_server_passes_the_merchant_on():
    async with CloudServer(devices=[(DEV, KEY)],
                           merchant=Merchant(out_of_stock={"coffee"})) as c:
        assert c.ledger.apply_report(DEV, json.dumps(rep(1, events=[order(1)])).encode()
                                     ).orders == {"coffee-3": "declined"}
    with pytest.raises(ValueError):
        CloudServer(Ledger(), merchant=Merchant())


def test_cloud_command_merchant_options():
    p = argparse.ArgumentParser()
    cloud_pkg.add_arguments(p)
    a = p.parse_args(["--ship-after-s", "60", "--out-of-stock", "coffee",
                      "--out-of-stock", "tablets"])
    assert (a.ship_after_s, a.deliver_after_s, a.out_of_stock) == (60, 172_800,
                                                                   ["coffee", "tablets"])
