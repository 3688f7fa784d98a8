"""The device's link (app/link.py): nothing the network does stops the counting. A host name
is looked up off the event loop (app.link.resolve), so a DNS that never answers costs the
sync, never a poll; Wi-Fi that never connects fails and the sync backs off."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import threading
import time

import pytest
from brewmeter import fieldtech, ports, standins
from brewmeter.emulator.board import Board
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.runs.demo import cloud_for
from test_resilience import brew, brews, test_profile


async def test_an_ip_literal_needs_no_lookup(monkeypatch):
    from app import link

    monkeypatch.setattr(socket, "getaddrinfo", None)  # any lookup would fail
    assert await link.resolve("192.168.1.20") == "192.168.1.20"


async def test_a_lookup_that_never_answers_fails_in_time_and_is_never_doubled(monkeypatch):
    from app import link

    monkeypatch.setattr(link, "_dns", None)
    gate = threading.Event()
    asked: list[str] = []
    real = socket.getaddrinfo

    def dns(host, port, af=0, *rest):
        asked.append(host)
        if not gate.wait(10):  # the DNS server is silent until the gate opens
            raise OSError(-202)
        return real("127.0.0.1", port, af, *rest)

    monkeypatch.setattr(socket, "getaddrinfo", dns)

    async def times_out(host: str, timeout_ms: int) -> None:
        task = asyncio.ensure_future(link.resolve(host, timeout_ms))
        await asyncio.sleep(0.05)
        assert not task.done()  # the event loop ran on meanwhile
        standins.clock.advance(timeout_ms)
        with pytest.raises(OSError, match=f"DNS: no answer for {host}"):
            await asyncio.wait_for(task, 5)

    await times_out("cloud.example", 5000)
    await times_out("pool.ntp.org", 2000)  # the first lookup is still blocked: not asked
    assert asked == ["cloud.example"]
    gate.set()  # the server answers again
    assert await asyncio.wait_for(link.resolve("cloud.example"), 5) == "127.0.0.1"
    assert asked == ["cloud.example", "cloud.example"]
    def unknown(*args):
        raise OSError(-2)

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    with pytest.raises(OSError, match="DNS: cloud.example: -2"):
        await asyncio.wait_for(link.resolve("cloud.example"), 5)


def _sync(board: Board, pin: str, during=None) -> str:
    """`sync --pin` on the console; `during()` once it started. Returns its result."""
    with ports.open_port(board.serial_port, timeout=0.2) as s:
        s.write(b"\rsync --pin %s\r" % pin.encode())
        seen = b""
        end = time.monotonic() + 60
        while b"sync: started" not in seen:
            assert time.monotonic() < end, seen
            seen += s.read(512)
        if during is not None:
            during()
        while not (m := re.search(rb"sync: (?!started)([^\r\n]*)\r\n", seen)):
            assert time.monotonic() < end, seen
            seen += s.read(512)
    return m[1].decode()


@pytest.mark.slow
@pytest.mark.board
def test_a_brew_while_the_dns_never_answers_is_counted_and_sent_once_it_does(tmp_path):
    """The cloud and the NTP server by name on the emulated board (the MicroPython unix
    port): found while the DNS answers; when it stops (each lookup blocks 15 s, as lwIP's
    can on an ESP32), a brew shorter than that stall made during the sync is counted, the
    console answers, and the sync fails. Once the DNS answers, the brew reaches the
    cloud."""
    prov = emulator_provision()
    prof = test_profile(tmp_path)  # min_brew_s 1
    with cloud_for(prov) as cloud, Board(tmp_path / "flash.img", board_profile=prof) as board:
        prov["cloud_url"] = cloud.url.replace("127.0.0.1", "localhost")
        prov["ntp"] = "localhost"
        Flasher(board.serial_port).flash(str(prof), prov)
        assert _sync(board, prov["service_pin"]) == "ok"  # looked up in a thread
        with board.control() as ctl:
            ctl.dns(False, hang_ms=15000)
            said = _sync(board, prov["service_pin"], during=lambda: brew(board, seconds=1.5))
            assert brews(board, timeout=40) == 1  # (a stalled loop answers late)
            assert said.startswith("DNS: no answer for localhost"), said
            assert fieldtech.ask(board.serial_port, "status")["last_sync"] == said
            ctl.dns(True)
        end = time.monotonic() + 60
        while (said := _sync(board, prov["service_pin"])) != "ok":  # once the stalled
            assert time.monotonic() < end, said  # lookup is over, a new one answers
        assert cloud.ledger.device(prov["device_id"])["counters"]["brews_total"] == 1


async def test_wifi_that_never_connects_fails_and_the_sync_backs_off(profile, tmp_path,
                                                                     monkeypatch):
    # The radio has no stand-in here but the emulated board's; use that one.
    from brewmeter import unixport

    sys.path.insert(0, str(unixport.ONMICROPYTHON / "esp32"))
    try:
        import network
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(network.WLAN, "connect", lambda self, ssid=None, key=None: None)
    from app.device import Device
    from app.link import Wifi
    from app.synctask import Syncer
    from brewmeter.standins.hostfs import DirFS

    d = Device(profile, DirFS(tmp_path))
    d.boot(1, 0)
    wifi = Wifi("office", "secret", timeout_ms=0)
    s = Syncer(d, {"device_id": "bm-x", "key": "00" * 32, "cloud_url": "http://127.0.0.1:9"},
               wifi)
    result = await s.sync_once()
    assert "Wi-Fi" in result and s.schedule.failures == 1
    assert wifi.state() == "down"
    assert json.dumps(s.last[1])  # the console can show why
