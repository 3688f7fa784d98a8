"""The device's clock and link: NTP over real UDP on 127.0.0.1 (the firmware's own
non-blocking query), a clock never trusted before it is set, and Wi-Fi that fails."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from pathlib import Path

import pytest
from app import wallclock

NTP_DELTA = 2208988800


class NtpServer(asyncio.DatagramProtocol):
    def __init__(self, unix_time: int, mode: int = 4) -> None:
        self.unix_time = unix_time
        self.mode = mode

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = bytearray(48)
        reply[0] = (0 << 6) | (3 << 3) | self.mode  # no leap, v3, server
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


async def test_wifi_that_never_connects_fails_and_the_sync_backs_off(profile, tmp_path,
                                                                     monkeypatch):
    # The radio has no stand-in here but the emulated board's; use that one.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host/brewmeter/board_machine"))
    try:
        import network
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(network.WLAN, "connect", lambda self, ssid=None, key=None: None)
    from app.device import Device
    from app.link import Wifi
    from app.syncer import Syncer
    from brewmeter.hostfs import DirFS

    d = Device(profile, DirFS(tmp_path))
    d.boot(1, 0)
    wifi = Wifi("office", "secret", timeout_ms=0)
    s = Syncer(d, {"device_id": "bm-x", "key": "00" * 32, "cloud_url": "http://127.0.0.1:9"},
               wifi)
    result = await s.sync_once()
    assert "Wi-Fi" in result and s.schedule.failures == 1
    assert wifi.state() == "down"
    assert json.dumps(s.last[1])  # the console can show why
