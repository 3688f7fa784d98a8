"""What the device does with a backend's replies, as docs/protocol.yaml says: refusals
raise a fault after a day and slow to hourly, config versions only move forward unless
restored, order statuses it does not know are kept and said, the key id travels."""

from __future__ import annotations

import asyncio
import json

import pytest
from app import protocol, synctask
from app.device import Device
from app.startup import unpack_supplies
from app.supplies import pack_supplies
from app.synctask import wire
from brewmeter import standins
from brewmeter.clock import VirtualClock
from brewmeter.standins import FIRMWARE
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
    assert synctask.apply_reply(device, _reply(5), []) is None
    assert device.config_version == 5
    rejected = synctask.apply_reply(device, _reply(3), [])
    assert rejected is not None and rejected[0] == 3 and "older" in rejected[1]
    assert device.config_version == 5 and device.config == {"lead_days": 5}
    assert synctask.apply_reply(device, _reply(3, restored=1), []) is not None  # true, not 1
    assert synctask.apply_reply(device, _reply(3, restored=True), []) is None
    assert device.config_version == 3 and device.config == {"lead_days": 3}
    assert synctask.apply_reply(device, _reply(4), []) is None and device.config_version == 4


def test_a_rejection_the_cloud_took_is_kept_until_a_new_config(device):
    assert synctask.apply_reply(device, _reply(5), []) is None
    rejected = synctask.apply_reply(device, _reply(3), [])
    assert rejected is not None and rejected[0] == 3
    # The cloud took it (no config in its reply): the next reports say it again, else the
    # cloud would take it back and send version 3 again, and so on every other report.
    took = b'{"ack":[],"config":null}'
    assert synctask.apply_reply(device, took, [], rejected) == rejected
    assert synctask.apply_reply(device, b'{"ack":[]}', [], rejected) == rejected
    assert synctask.apply_reply(device, _reply(6), [], rejected) is None  # a new one, applied
    assert device.config_version == 6


def test_an_unknown_order_status_is_kept_shown_and_said(device, profile):
    from app.console import Console
    from brewmeter.standins import settle

    it = device.supplies.items["coffee"]
    it[2] = "placed"
    oid = protocol.order_id("coffee", it[0])
    synctask.apply_reply(device, json.dumps({"ack": [], "orders": {oid: "cancelled"}}).encode(),
                         [])
    assert it[2] == "cancelled"
    con = Console(device)
    assert "order cancelled" in settle(con.command("consumables"))
    assert f"order_status {oid} cancelled" in settle(con.command("faults"))
    assert [e for e in device.outbox.events if e.get("code") == "order_status"]
    assert oid not in synctask.open_orders(device.supplies)  # no longer open: no order again
    synctask.apply_reply(device, json.dumps({"ack": [], "orders": {oid: "cancelled"}}).encode(),
                         [])
    assert len([f for f in device.faults if f[0] == "order_status"]) == 1  # said once
    # kept over a reboot (as "other": the record keeps a code, not the word)
    packed = pack_supplies(device.supplies, device.forecast, device.brew_times)
    back = unpack_supplies(packed, len(profile.kinds))
    assert back is not None and back[0]["it"]["coffee"][2] == protocol.OTHER


_DECIDE = """
import json
from app import orders, protocol, sync
from app.supplies import ITEMS

class Sup:
    items = {n: [3, 0, "placed", 0] for n in ITEMS}

s = Sup()
reply = {"coffee-3": "cancelled", "filter-3": "shipped", "tablets-3": "unknown"}
todo = sync.actions(json.dumps({"ack": [], "orders": reply}), [], 0, (), {}.get, None,
                    orders.open_orders(s))[0]
got = orders.apply_status(s, reply)
print(json.dumps([got[0], got[1], [a[2].split(" ") for a in todo if a[0] == "fault"],
                  s.items["coffee"][2],
                  s.items["filter"][2], sync.refusal(400, b'{"error":"no fw"}'),
                  sync.refusal(403, b"\\xff\\xfe denied"), sync.refusal(401, b"x" * 300),
                  [protocol.refused(x) for x in (200, 301, 400, 409, 429, 503)],
                  [sync.after_conflict(b, 5) for b in (
                      b'{"seq":4503599627370495}', b'{"seq":4503599627370496}',
                      b'{"seq":9007199254740991}', b'{"seq":-1}', b'{"seq":3}', b"<html>",
                      b'{"seq":"7"}')]]))
"""


def test_the_decisions_match_under_micropython():
    """Unknown order statuses, the refusal's detail and the status classes: the same on the
    MicroPython unix port as under CPython."""
    from brewmeter import unixport

    printed: list[str] = []
    exec(_DECIDE, {"print": printed.append})
    on_cpython = json.loads(printed[0])
    out = unixport.run(["-c", f"import sys; sys.path.insert(0, {str(FIRMWARE)!r})\n" + _DECIDE])
    assert json.loads(out) == on_cpython
    assert on_cpython[:5] == [True, ["tablets"], [["coffee-3", "cancelled"]], "cancelled",
                              "shipped"]
    assert on_cpython[5] == "400 no fw" and on_cpython[6] == "403 "
    assert len(on_cpython[7]) == protocol.MAX_TEXT
    assert on_cpython[8] == [False, True, True, False, False, False]
    # a 409's seq: up to 2**52-1 the device goes past it (or its own); more, or none an
    # integer, it refuses
    assert on_cpython[9] == [2**32, None, None, None, 1, 1, None]


@pytest.mark.parametrize("named", [protocol.MAX_INT, protocol.MAX_NAMED_SEQ + 1, 10 ** 30, -1,
                                   "12", 1.5, True])
async def test_a_409_naming_a_seq_no_backend_may_changes_nothing(device, clock, tmp_path,
                                                                 named):
    """Obeying it would leave the device no seq the cloud accepts, for good (a 409 naming
    2**53-1 put every later report above the protocol's integers)."""
    from brewmeter.cloud import CloudServer

    server, url = await _cloud(409, json.dumps({"error": "seq conflict", "seq": named}).encode(),
                               [])
    async with server:
        s = _syncer(device, url)
        era = s.era
        result = await s.sync_once()
    async with CloudServer(tmp_path / "ledger.db", devices=[("bm-c1", "ab" * 32)]) as cloud:
        s.url = cloud.url  # the next report, to a backend that keeps the protocol
        assert await s.sync_once() == "ok"
        again = Device(device.profile, device.store.fs)  # and after a reboot
        again.boot(1, 0)
        assert await _syncer(again, cloud.url).sync_once() == "ok"
    assert result != "seq conflict" and (s.era, device.seq_era, again.seq_era) == (era, 0, 0)


async def test_409s_naming_a_bad_seq_for_a_day_are_a_refusal(device, clock):
    server, url = await _cloud(409, json.dumps({"error": "seq conflict",
                                                "seq": protocol.MAX_INT}).encode(), [])
    async with server:
        s = _syncer(device, url)
        while clock.ms < 26 * HOUR_MS:
            await s.sync_once()
            clock.advance(max(s.schedule.ms_until_due(clock.ticks_ms()), 1))
    assert [f for f in device.faults if f[0] == "sync_refused"] == [
        ("sync_refused", "409 seq conflict")]
    assert device.seq_era == 0


async def test_a_409_naming_the_highest_seq_a_backend_may_leaves_room_for_every_boot(
        device, clock, tmp_path):
    from brewmeter.cloud import CloudServer

    top = protocol.MAX_NAMED_SEQ
    server, url = await _cloud(409, json.dumps({"error": "x", "seq": top}).encode(), [])
    async with server:
        s = _syncer(device, url)
        assert await s.sync_once() == "seq conflict"
    assert protocol.seq(s.era, 0) > top
    async with CloudServer(tmp_path / "ledger.db", devices=[("bm-c1", "ab" * 32)]) as cloud:
        s = _syncer(device, cloud.url)
        assert await s.sync_once() == "ok"
        assert cloud.ledger.device("bm-c1")["last_seq"] > top
    # The boot counter is 32 bits: whatever it reaches, every seq stays a protocol integer.
    assert protocol.seq(s.era + 0xFFFFFFFF, protocol.SEQ_PER_BOOT - 1) <= protocol.MAX_INT


async def test_a_floor_saved_past_any_a_backend_may_name_is_dropped(profile, tmp_path, clock):
    """A device that obeyed such a 409 before this firmware syncs again after the update."""
    from brewmeter.cloud import CloudServer

    old = Device(profile, DirFS(tmp_path))
    old.boot(1, 0)
    old.seq_floor(protocol.era_after(protocol.MAX_INT))  # as the old firmware saved it
    dev = Device(profile, DirFS(tmp_path))
    dev.boot(1, 0)
    async with CloudServer(tmp_path / "ledger.db", devices=[("bm-c1", "ab" * 32)]) as cloud:
        assert await _syncer(dev, cloud.url).sync_once() == "ok"
