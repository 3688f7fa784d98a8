"""A device's life, step by step, for the property test and the issue's reproductions: the
firmware's own Device and Syncer under CPython on a virtual clock, reporting over HTTP on
127.0.0.1 to the emulated cloud (whose clock is the same virtual one). Steps: days of use
online or offline, reboots and power cuts, a wrong NTP answer at boot, desired configs
(valid or not), refills, cloud restarts, a cloud that lost its data, and a device that lost
its flash. `heal()` brings the network back and syncs until the device is caught up."""

from __future__ import annotations

import contextlib
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brewmeter import standins
from brewmeter.clock import VirtualClock
from brewmeter.onmicropython import replay
from brewmeter.profiles import load_profile
from brewmeter.runs.household import Link
from brewmeter.runs.usage import START_WALL
from brewmeter.standins.hostfs import MemFS

if TYPE_CHECKING:  # the firmware and the cloud: imported where used (see profiles.py)
    from app.device import Device
    from app.synctask import Syncer

    from brewmeter.cloud import CloudServer
    from brewmeter.cloud.ledger import Ledger

DEVICE = "bm-life01"
KEY = "7c" * 32
PRICE_CENTS = 35
HOUR_MS = 3_600_000
FIRST = date(2025, 1, 1)  # before START_WALL: every day a life can bill lies in FIRST..LAST
LAST = date(2029, 12, 31)


class Life:
    """Use as `async with Life(tmp_path) as life:`."""

    def __init__(self, tmp: Path, board: str = "emulator") -> None:
        self.tmp = tmp
        self.profile = load_profile(board)
        self.clock = VirtualClock(ticks_start=replay.ticks(0))
        self.fs = MemFS()
        self.link = Link()
        self.skew = 0  # the NTP server's error (s): what the device's clock is set to at boot
        self.db = tmp / "ledger.db"
        self.results: list[str] = []  # every sync's result
        self.flash_lost = self.cloud_lost = False
        self.truth: dict[int, int] = {}  # brews per true UTC day (days since 1970)
        self.ledger: Ledger
        self.cloud: CloudServer
        self.device: Device
        self.syncer: Syncer

    def wall(self) -> int:
        """The true time (what the cloud's clock says)."""
        return START_WALL + self.clock.ms // 1000

    def ticks(self) -> int:
        return self.clock.ticks_ms()

    async def __aenter__(self) -> Life:
        self._old_clock = standins.clock
        standins.set_clock(self.clock)
        await self._cloud_up(new=True)
        self.boot()
        return self

    async def __aexit__(self, *exc: object) -> None:
        from app import wallclock

        try:
            await self._cloud_down()
        finally:
            standins.set_clock(self._old_clock)
            wallclock.synced = False

    async def _cloud_up(self, new: bool) -> None:
        from brewmeter.cloud import CloudServer
        from brewmeter.cloud.ledger import Ledger

        self.ledger = Ledger(self.db, synchronous="NORMAL", now=self.wall)
        self.cloud = CloudServer(self.ledger, devices=[(DEVICE, KEY)])
        await self.cloud.__aenter__()
        if new:
            self.ledger.set_plan(DEVICE, {"price_per_brew": PRICE_CENTS / 100})
        if hasattr(self, "syncer"):
            self.syncer.url = self.cloud.url

    async def _cloud_down(self) -> None:
        await self.cloud.__aexit__(None, None, None)
        self.ledger.close()

    # -- the device ------------------------------------------------------------------------

    def boot(self) -> None:
        """Power on (RAM starts empty; the flash is as it was). NTP answers at once, with
        the server's error `skew`."""
        from app import wallclock
        from app.device import Device
        from app.synctask import wire

        wallclock.synced = False
        dev = Device(self.profile, self.fs)
        wallclock.set_unix(self.wall() + self.skew)
        dev.boot(1, self.ticks())
        s = wire(dev, {"device_id": DEVICE, "key": KEY, "cloud_url": self.cloud.url,
                       "ntp": ""}, self.link)  # NTP: played here
        self.device, self.syncer = dev, s

    def reboot(self) -> None:
        self.device.save(self.ticks())
        self.boot()

    def lose_flash(self) -> None:
        """A replaced flash chip: the device starts from nothing, the cloud remembers."""
        self.fs = MemFS()
        self.flash_lost = True
        self.boot()

    def brew(self, kind: int = 0) -> None:
        from app.meter import BREW

        dev = self.device
        dev.meter.c.brews[kind] += 1
        dev.event(BREW, kind, self.ticks())
        day = self.wall() // 86400
        self.truth[day] = self.truth.get(day, 0) + 1

    def advance(self, ms: int) -> None:
        """Time passes; the device's clock (once set) runs with it."""
        from app import wallclock

        off = wallclock.now() - self.wall() if wallclock.synced else None
        self.clock.advance(ms)
        if off is not None:
            wallclock.set_unix(self.wall() + off)
        replay.tick(self.device, self.ticks())

    async def sync_if_due(self) -> str | None:
        if not self.syncer.schedule.is_due(self.ticks()):
            return None
        r = await self.syncer.sync_once()
        self.results.append(r)
        return r

    async def day(self, brews: int, online: bool = True, kind: int = 0) -> None:
        """One day: `brews` brews from 7:00, one an hour at most; a sync whenever due."""
        self.link.ok = online
        for h in range(24):
            if 0 <= h - 7 < brews:
                self.brew(kind)
            await self.sync_if_due()
            self.advance(HOUR_MS)
        for _ in range(max(0, brews - 17)):  # a busy day: the rest in the evening
            self.brew(kind)

    async def heal(self, tries: int = 40) -> list[str]:
        """The network is back: sync (a minute apart, or as the schedule says) until the
        device is caught up: no page left, no event unacknowledged. Returns the results."""
        self.link.ok = True
        got = []
        for _ in range(tries):
            self.syncer.schedule.due = self.ticks()
            r = await self.syncer.sync_once()
            self.results.append(r)
            got.append(r)
            if r == "ok" and not self.device.days.more and not self.device.outbox.events:
                break
            self.advance(60_000)
        return got

    # -- the owner and the cloud ---------------------------------------------------------------

    def desire(self, settings: dict[str, Any]) -> bool:
        """The owner sets a desired config; False if the cloud refused it."""
        try:
            self.ledger.set_config(DEVICE, settings)
        except ValueError:
            return False
        return True

    def refill(self, item: str) -> None:
        self.device.refill(item, "owner", self.ticks())

    async def cloud_restart(self) -> None:
        await self._cloud_down()
        await self._cloud_up(new=False)

    async def cloud_loses_data(self) -> None:
        await self._cloud_down()
        with contextlib.suppress(FileNotFoundError):
            self.db.unlink()
        self.cloud_lost = True
        await self._cloud_up(new=True)

    # -- what a user would check ------------------------------------------------------------

    def cloud_device(self) -> dict[str, Any]:
        got = self.ledger.device(DEVICE)
        assert got is not None
        return got

    def device_counters(self) -> dict[str, Any]:
        from app import synctask

        return synctask.usage(self.device)

    def cloud_days(self) -> list[dict[str, Any]]:
        """Every day with usage, as the cloud bills it."""
        got = self.ledger.days(DEVICE, FIRST, LAST)
        assert got is not None
        return got["days"]

    def invoice(self) -> dict[str, Any]:
        """The bill over every day a life can reach."""
        got = self.ledger.invoice(DEVICE, FIRST, LAST)
        assert got is not None
        return got
