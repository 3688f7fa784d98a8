"""What the device does with a backend's replies, as docs/protocol.yaml says: refusals
raise a fault after a day and slow to hourly, config versions only move forward unless
restored, order statuses it does not know are kept and said, the key id travels."""

from __future__ import annotations

import asyncio
import json

import pytest
from app import protocol, supplystore, sync
from app.device import Device
from app.syncer import wire
from brewmeter import standins
from brewmeter.clock import VirtualClock
from brewmeter.standins.hostfs import DirFS

HOUR_MS = 3_600_000


class Loopback:
    async def up(self) -> None:
        return None


@pytest.fixture
def device(profile, tmp_path):
    d = Device(profile, DirFS(tmp_path))
    d.boot(1, 0)
    return d


@pytest.fixture
def clock():
    old, c = standins.clock, VirtualClock()
    standins.set_clock(c)
    yield c
    standins.set_clock(old)


async def _cloud(status: int, body: bytes, heard: list[bytes]):
    """A backend answering every report with `status` and `body` (JSON, Content-Length)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            heard.append(head + await reader.readexactly(n))
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body))
                         + body)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _syncer(device, url, **prov):  # noqa: ANN001
    return wire(device, {"device_id": "bm-c1", "key": "ab" * 32, "cloud_url": url, "ntp": "",
                         **prov}, Loopback(), wall=device.wall)


async def test_a_refusal_repeated_for_a_day_is_a_fault_and_retries_go_hourly(device, clock):
    heard: list[bytes] = []
    server, url = await _cloud(400, json.dumps({"error": "unknown field x" * 40}).encode(),
                               heard)
    async with server:
        s = _syncer(device, url)
        waits = []
        while clock.ms < 30 * HOUR_MS:
            assert await s.sync_once() == "HTTP 400"
            wait = s.schedule.ms_until_due(clock.ticks_ms())
            assert wait <= HOUR_MS  # never waits longer than an hour between tries
            waits.append(wait)
            clock.advance(max(wait, 1))
    codes = [f for f in device.faults if f[0] == "sync_refused"]
    assert len(codes) == 1  # raised once, after the first day
    detail = codes[0][1]
    assert detail.startswith("400 unknown field x") and len(detail) <= protocol.MAX_TEXT
    assert waits[-1] == HOUR_MS  # after the fault: hourly
    # the fault is in the outbox: the next report carries it
    assert [e for e in device.outbox.events if e.get("code") == "sync_refused"]
    assert b'"sync_refused"' in heard[-1]


async def test_a_200_ends_the_refusal_and_a_5xx_is_no_refusal(device, clock):
    for status in (503, 429):
        server, url = await _cloud(status, b'{"error":"busy"}', [])
        async with server:
            s = _syncer(device, url)
            for _ in range(40):
                await s.sync_once()
                clock.advance(HOUR_MS)
        assert s.refused_at is None
    assert not [f for f in device.faults if f[0] == "sync_refused"]


async def test_the_key_id_travels_in_its_header(device, clock):
    heard: list[bytes] = []
    server, url = await _cloud(200, b'{"ack":[],"seq":1,"config":null}', heard)
    async with server:
        assert await _syncer(device, url, key_id="k2").sync_once() == "ok"
        assert await _syncer(device, url).sync_once() == "ok"
    assert f"\r\n{protocol.KEY_HEADER}: k2\r\n".encode() in heard[0]
    assert protocol.KEY_HEADER.encode() not in heard[1]


def _reply(version, restored=None):
    cfg = {"version": version, "settings": {"lead_days": version}}
    if restored is not None:
        cfg[protocol.RESTORED] = restored
    return json.dumps({"ack": [], "config": cfg}).encode()


def test_config_versions_only_move_forward_unless_restored(device):
    assert sync.apply_reply(device, _reply(5), []) is None
    assert device.config_version == 5
    rejected = sync.apply_reply(device, _reply(3), [])
    assert rejected is not None and rejected[0] == 3 and "older" in rejected[1]
    assert device.config_version == 5 and device.config == {"lead_days": 5}
    assert sync.apply_reply(device, _reply(3, restored=1), []) is not None  # true, not 1
    assert sync.apply_reply(device, _reply(3, restored=True), []) is None
    assert device.config_version == 3 and device.config == {"lead_days": 3}
    assert sync.apply_reply(device, _reply(4), []) is None and device.config_version == 4


def test_an_unknown_order_status_is_kept_shown_and_said(device, profile):
    from app.console import Console

    it = device.supplies.items["coffee"]
    it[2] = "placed"
    oid = protocol.order_id("coffee", it[0])
    sync.apply_reply(device, json.dumps({"ack": [], "orders": {oid: "cancelled"}}).encode(),
                     [])
    assert it[2] == "cancelled"
    con = Console(device)
    assert "order cancelled" in con.command("consumables")
    assert f"order_status {oid} cancelled" in con.command("faults")
    assert [e for e in device.outbox.events if e.get("code") == "order_status"]
    assert oid not in sync.open_orders(device.supplies)  # no longer open: no order again
    sync.apply_reply(device, json.dumps({"ack": [], "orders": {oid: "cancelled"}}).encode(),
                     [])
    assert len([f for f in device.faults if f[0] == "order_status"]) == 1  # said once
    # kept over a reboot (as "other": the record keeps a code, not the word)
    packed = supplystore.pack(device.supplies, device.forecast, device.brew_times)
    back = supplystore.unpack(packed, len(profile.kinds))
    assert back is not None and back[0]["it"]["coffee"][2] == protocol.OTHER


_DECIDE = """
import json
from app import orders, protocol, sync
from app.supplies import ITEMS

class Sup:
    items = {n: [3, 0, "placed", 0] for n in ITEMS}

s = Sup()
got = orders.apply_status(s, {"coffee-3": "cancelled", "filter-3": "shipped",
                                          "tablets-3": "unknown"})
print(json.dumps([got[0], got[1], [list(x) for x in got[2]], s.items["coffee"][2],
                  s.items["filter"][2], sync.refusal(400, b'{"error":"no fw"}'),
                  sync.refusal(403, b"\\xff\\xfe denied"), sync.refusal(401, b"x" * 300),
                  [protocol.refused(x) for x in (200, 301, 400, 409, 429, 503)]]))
"""


def test_the_decisions_match_under_micropython():
    """Unknown order statuses, the refusal's detail and the status classes: the same on the
    MicroPython unix port as under CPython."""
    from brewmeter import mp

    printed: list[str] = []
    exec(_DECIDE, {"print": printed.append})
    on_cpython = json.loads(printed[0])
    out = mp.run(["-c", f"import sys; sys.path.insert(0, {str(mp.FIRMWARE)!r})\n" + _DECIDE])
    assert json.loads(out) == on_cpython
    assert on_cpython[:5] == [True, ["tablets"], [["coffee-3", "cancelled"]], "cancelled",
                              "shipped"]
    assert on_cpython[5] == "400 no fw" and on_cpython[6] == "403 "
    assert len(on_cpython[7]) == protocol.MAX_TEXT
    assert on_cpython[8] == [False, True, True, False, False, False]
