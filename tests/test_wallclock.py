"""The device's clock (app/wallclock.py): NTP over real UDP on 127.0.0.1 (the firmware's own
non-blocking query), and a clock never trusted before it is set."""

from __future__ import annotations

import asyncio
import calendar
import struct

import pytest
from app import wallclock

NTP_DELTA = 2208988800


class NtpServer(asyncio.DatagramProtocol):
    def __init__(self, unix_time: int, mode: int = 4, leap: int = 0, stratum: int = 2,
                 echo: bool = True) -> None:
        self.unix_time = unix_time
        self.mode, self.leap, self.stratum, self.echo = mode, leap, stratum, echo

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = bytearray(48)
        reply[0] = (self.leap << 6) | (3 << 3) | self.mode  # v3, server
        reply[1] = self.stratum
        if self.echo:  # the origin timestamp: the query's transmit timestamp, back
            reply[24:32] = data[40:48]
        reply[40:44] = struct.pack("!I", self.unix_time + NTP_DELTA)
        self.transport.sendto(bytes(reply), addr)  # type: ignore[attr-defined]


async def _serve(proto: NtpServer) -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: proto,
                                                       local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]


async def test_ntp_query_sets_the_clock_only_when_asked():
    transport, port = await _serve(NtpServer(1_800_000_123))
    try:
        wallclock.synced = False
        assert wallclock.now() == 0  # never trusted before NTP answered this boot
        t = await wallclock.ntp_query("127.0.0.1", port)
        assert t == 1_800_000_123
        wallclock.set_unix(t)
        assert abs(wallclock.now() - 1_800_000_123) <= 1
    finally:
        wallclock.synced = False
        transport.close()


async def test_a_client_mode_reply_is_not_a_time():
    transport, port = await _serve(NtpServer(1_800_000_000, mode=3))
    try:
        with pytest.raises(OSError, match="bad NTP reply"):
            await wallclock.ntp_query("127.0.0.1", port)
    finally:
        transport.close()


@pytest.mark.parametrize(("server", "why"), [
    (NtpServer(1_800_000_000, echo=False), "another query"),  # spoofed, or a stale reply
    (NtpServer(1_800_000_000, leap=3), "not synchronised"),  # alarm: clock not set
    (NtpServer(1_800_000_000, stratum=0), "not synchronised"),  # kiss-o'-death
    (NtpServer(1_800_000_000, stratum=16), "not synchronised"),  # unsynchronised
])
async def test_unsound_ntp_replies_are_refused(server, why):
    transport, port = await _serve(server)
    try:
        with pytest.raises(OSError, match=why):
            await wallclock.ntp_query("127.0.0.1", port)
    finally:
        transport.close()


def test_clock_before_the_firmware_or_a_big_ntp_step_is_not_believed():
    try:
        wallclock.synced = False
        assert not wallclock.set_unix(wallclock.BUILT_DAY * 86400 - 1)  # before it was built
        assert wallclock.now() == 0
        assert wallclock.set_unix(1_800_000_000, wallclock.STEP_MAX)  # the first: any step
        assert not wallclock.set_unix(1_800_000_000 + 2 * 3600, wallclock.STEP_MAX)
        assert wallclock.set_unix(1_800_000_000 + 60, wallclock.STEP_MAX)  # a small drift
        assert abs(wallclock.now() - 1_800_000_060) <= 1
    finally:
        wallclock.synced = False


def test_the_clouds_date_corrects_a_clock_far_off():
    date = b"Fri, 15 Jan 2027 10:00:00 GMT"
    t = wallclock.http_date(date)
    assert t == calendar.timegm((2027, 1, 15, 10, 0, 0))
    assert wallclock.http_date(b"yesterday") == 0
    assert wallclock.http_date(b"Fri, 15 anF 2027 10:00:00 GMT") == 0
    try:
        wallclock.synced = False
        assert not wallclock.cross_check(t)  # no clock yet: NTP sets it, not the Date
        wallclock.set_unix(t + 3 * 365 * 86400)  # a wrong NTP answer: 3 years ahead
        assert wallclock.cross_check(t)
        assert abs(wallclock.now() - t) <= 1
        assert not wallclock.cross_check(t + 120)  # within the slack: NTP's clock stays
    finally:
        wallclock.synced = False


async def test_the_clouds_date_moves_what_the_wrong_clock_dated(profile, tmp_path):
    import time

    from app import waterfilter
    from app.device import Device
    from app.synctask import wire
    from brewmeter.cloud import CloudServer
    from brewmeter.standins.hostfs import DirFS

    class Up:
        async def up(self) -> None:
            return None

    key = "cd" * 32
    real = int(time.time())  # the emulated cloud's Date is the real time
    ahead = 3 * 365 * 86400
    fs = DirFS(tmp_path)
    d = Device(profile, fs)
    d.boot(1, 0)
    d.meter.powered(7200)  # the filter fitted two powered hours ago, the clock unknown
    try:
        wallclock.synced = False
        async with CloudServer(tmp_path / "ledger.db", devices=[("bm-date1", key)]) as cloud:
            s = wire(d, {"device_id": "bm-date1", "key": key, "cloud_url": cloud.url,
                         "ntp": ""}, Up())
            wallclock.set_unix(real + ahead)  # a wrong NTP answer, three years ahead
            d.day_tick(0)  # dates the filter, and rolls the forecast to that clock's day
            c = d.meter.c
            assert abs(c.filter_fit_wall - (real + ahead - 7200)) <= 2
            assert await s.sync_once() == "ok"  # the cloud's Date takes the clock back
            assert abs(c.filter_fit_wall - (real - 7200)) <= 2  # and the fit date with it
            assert abs(waterfilter.age_s(c, wallclock.now()) - 7200) <= 2
            assert d.forecast.day == real // 86400
            fit = c.filter_fit_wall
            assert await s.sync_once() == "ok"  # the clocks agree now: nothing moves again
            assert c.filter_fit_wall == fit
    finally:
        wallclock.synced = False
    d2 = Device(profile, fs)  # it was saved: a reboot keeps it, and moves nothing
    d2.boot(1, 0)
    assert d2.meter.c.filter_fit_wall == fit and d2.forecast.day == real // 86400


def test_a_correction_moves_only_what_this_boots_clock_dated(profile, tmp_path):
    from app.device import Device
    from brewmeter.standins.hostfs import DirFS

    t = 1_800_000_000
    wall = [t]
    fs = DirFS(tmp_path)
    d = Device(profile, fs)
    d.wall = lambda: wall[0]
    d.boot(1, 0)
    d.day_tick(0)  # a right clock dates the filter
    d.save(0)  # (saved with the next brew)
    first = d.refill("coffee", "console")  # an event of this boot, not sent yet
    d2 = Device(profile, fs)  # the next boot's NTP answer is a year ahead
    wall[0] = t + 365 * 86400
    d2.wall = lambda: wall[0]
    d2.boot(1, 0)
    d2.day_tick(0)
    second = d2.refill("descaler", "console")
    d2.clock_corrected(wall[0], t + 60, 0)  # the cloud's Date
    walls = {e["id"]: e.get("wall") for e in d2.outbox.events}
    assert walls[first["id"]] == t  # dated by the earlier boot's clock: kept
    assert walls[second["id"]] == t + 60  # dated by the wrong one: moved
    assert d2.meter.c.filter_fit_wall == t  # fitted under the earlier boot's clock: kept
    assert d2.forecast.day == t // 86400
    d3 = Device(profile, fs)
    d3.boot(1, 0)
    assert {e["id"]: e.get("wall") for e in d3.outbox.events} == walls


@pytest.mark.slow
@pytest.mark.board
def test_the_console_says_the_clock_is_set_once_ntp_answered(tmp_path):
    """On the emulated board: the service console's status asks the clock the app wired to
    the device (app.run), which NTP sets."""
    import threading
    import time

    from brewmeter import fieldtech
    from brewmeter.emulator.board import Board
    from brewmeter.flasher import Flasher
    from brewmeter.flashfiles import emulator_provision

    loop = asyncio.new_event_loop()
    transport, port = loop.run_until_complete(_serve(NtpServer(int(time.time()))))
    server = threading.Thread(target=loop.run_forever, daemon=True)
    server.start()
    try:
        prov = emulator_provision("http://127.0.0.1:9")  # no cloud: NTP comes first
        prov["ntp"] = f"127.0.0.1:{port}"
        with Board(tmp_path / "flash.img", board_profile="emulator") as board:
            Flasher(board.serial_port).flash("emulator", prov)
            end = time.monotonic() + 30
            while (clock := fieldtech.ask(board.serial_port, "status")["clock"]) != "set":
                assert clock == "not set" and time.monotonic() < end, clock
                time.sleep(0.5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        server.join(5)
        transport.close()
        loop.close()
