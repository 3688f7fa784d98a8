"""wire_bytes_per_day: what the device's sync sends and receives on a typical day (10
brews), headers included, counted by a TCP relay between the firmware's syncer (CPython, on
the virtual clock) and the emulated cloud."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path

from brewmeter import standins
from brewmeter.profiles import load_profile
from brewmeter.standins.hostfs import DirFS

DEVICE, KEY = "bm-wire01", "77" * 32
WALL0 = 1_767_571_200  # a Monday, 00:00 UTC
MINUTE = 60_000


class Relay:
    """127.0.0.1 relay to `port` that counts the bytes both ways."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bytes = 0

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(4096):
                self.bytes += len(data)
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def measure(days: int = 3, brews_per_day: int = 10, seed: int = 0) -> float:
    from app import wallclock
    from app.device import Device
    from app.meter import BREW
    from app.synctask import wire

    from brewmeter.cloud import CloudServer

    rng = random.Random(seed)
    clock = standins.clock
    with tempfile.TemporaryDirectory() as d:
        async with CloudServer(":memory:", devices=[(DEVICE, KEY)]) as cloud:
            relay = Relay(cloud.port)
            url = await relay.start()
            device = Device(load_profile("emulator"), DirFS(Path(d)))
            wall = [WALL0]
            device.boot(1, clock.ticks_ms())
            syncer = wire(device, {"device_id": DEVICE, "key": KEY, "cloud_url": url,
                                   "ntp": ""}, _Up(), wall=lambda: wall[0])  # set below
            wallclock.set_unix(wall[0])
            per_day = []
            try:
                for _ in range(days):
                    start = relay.bytes
                    at = sorted(rng.randrange(7 * 60, 18 * 60) for _ in range(brews_per_day))
                    for minute in range(24 * 60):
                        while at and at[0] == minute:
                            at.pop(0)
                            c = device.meter.c  # what a brew changes
                            c.brews[rng.randrange(3)] += 1
                            c.water_ml += 60
                            c.filter_ml += 60
                            c.pump_ms += 25_000
                            c.filter_pump_ms += 25_000
                            c.filter_brews += 1
                            device.event(BREW, 0, clock.ticks_ms())
                        if syncer.schedule.is_due(clock.ticks_ms()):
                            await syncer.sync_once()
                        clock.advance(MINUTE)
                        wall[0] += 60
                        wallclock.set_unix(wall[0])
                    per_day.append(relay.bytes - start)
            finally:
                wallclock.synced = False
                relay.server.close()
    return per_day[-1]  # a day in steady state, after the boot's first report


class _Up:
    async def up(self) -> None:
        return None


def wire_bytes_per_day() -> dict[str, float]:
    return {"wire_bytes_per_day": asyncio.run(measure())}
