"""The fleet's machines: each the firmware's own Device and Syncer with its household's
days of use (usage.py's, from its own seed, shifted by its time zone), played on the fleet's
virtual clock (see fleet.py)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from brewmeter.clock import ticks_diff
from brewmeter.onmicropython import replay
from brewmeter.runs.household import Link
from brewmeter.runs.usage import DAY_MS, _day
from brewmeter.scenario import Script
from brewmeter.standins.hostfs import MemFS

if TYPE_CHECKING:  # the firmware: imported where used (see harness.py)
    from app.device import Device
    from app.syncer import Syncer

STEP_MS = 300_000  # the virtual clock's step: reports due within it go out together


def device_id(i: int) -> str:
    return f"bm-fleet{i:06d}"


def key(seed: int, i: int) -> str:
    return hashlib.sha256(f"fleet {seed} {i}".encode()).hexdigest()


class Machine:
    """One machine: its Device and Syncer, its household's days (from its own seed, shifted
    by its time zone) and where it is in them."""

    def __init__(self, i: int, seed: int, profile: Any, url: str, link: Link,
                 wall: Callable[[], int]) -> None:
        from app.device import Device
        from app.synctask import wire

        self.id = device_id(i)
        self.profile = profile
        self.rng = random.Random(seed * 1_000_003 + i)
        self.offset = self.rng.randrange(DAY_MS // STEP_MS) * STEP_MS  # its midnight, UTC
        self.day = -1  # its local days, from the one the run starts in
        self.events: list[tuple[int, int, int, int]] = []
        self.k = 0
        self.ahead: list[tuple[int, int, int, int]] | None = None  # its next day, made early
        self.tw = 0  # the ticks of the event being played
        self.device: Device = Device(profile, MemFS())
        self.device.boot(1, replay.ticks(0))
        self.syncer: Syncer = wire(self.device, {"device_id": self.id, "key": key(seed, i),
                                                 "cloud_url": url, "ntp": ""}, link, wall=wall)
        self._more_days()

    def _more_days(self) -> None:
        self.day += 1
        self.events = self._script(self.day) if self.ahead is None else self.ahead
        self.ahead = None
        self.k = 0

    def _script(self, day: int) -> list[tuple[int, int, int, int]]:
        # The flow meter's pulses in one event at the end of each run (or stretch of water
        # with no pump) rather than one every PULSE_CHUNK_MS: the same water, the pump still
        # on (its release is debounced), and no chunks to make, sort and merge.
        script = Script(self.profile, start_ms=self.offset + (day - 1) * DAY_MS,
                        pulse_chunk_ms=DAY_MS)
        _day(script, self.rng, (day - 1) % 7)
        return sorted(e for e in script.events if e[0] >= 0)

    def prepare(self) -> bool:
        """Its next day of use made now (the fleet has time while the cloud answers), from
        its own generator as it would be when that day comes: False if it already was."""
        if self.ahead is not None:
            return False
        self.ahead = self._script(self.day + 1)
        return True

    def next_event(self) -> int:
        return self.events[self.k][0] if self.k < len(self.events) else \
            self.offset + self.day * DAY_MS

    def play(self, until: int) -> bool:
        """Its usage up to script time `until` (not included): True if it began a day."""
        dev, events, step, tick, ticks = self.device, self.events, replay.step, replay.tick, \
            replay.ticks
        day = self.day
        while True:
            if self.k >= len(events):
                if self.offset + self.day * DAY_MS >= until:
                    return self.day != day
                self._more_days()
                events = self.events
                continue
            t, op, a, b = events[self.k]
            if t >= until:
                return self.day != day
            self.k += 1
            self.tw = tw = ticks(t)
            if op == replay.POWERED:  # replay.tick counts powered time from the ticks
                a = 0
            step(dev.meter, t, op, a, b, self._event)
            tick(dev, tw)

    def _event(self, code: int, i: int) -> None:
        self.device.event(code, i, self.tw)

    def due_ms(self, clock_ms: int) -> int:
        """Script time its next report is due."""
        return clock_ms + ticks_diff(self.syncer.schedule.due, replay.ticks(clock_ms))
