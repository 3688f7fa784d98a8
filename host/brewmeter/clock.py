"""A virtual clock for the harness: ticks_ms that wrap like MicroPython's, and a wall clock
that may be unset, both advanced only by the scenario."""

from __future__ import annotations

# MicroPython's ticks wrap at 2**30 on the ESP32 and unix ports (TICKS_PERIOD).
TICKS_PERIOD = 1 << 30
_HALF = TICKS_PERIOD // 2


def ticks_diff(a: int, b: int) -> int:
    return ((a - b + _HALF) & (TICKS_PERIOD - 1)) - _HALF


def ticks_add(a: int, delta: int) -> int:
    return (a + delta) & (TICKS_PERIOD - 1)


class VirtualClock:
    def __init__(self, wall_start: int | None = None, ticks_start: int = 0) -> None:
        self.ms = 0  # monotonic ms since the clock was made; never wraps
        self._ticks0 = ticks_start
        self._wall0 = wall_start  # epoch seconds at ms == 0, or None while unset

    def ticks_ms(self) -> int:
        return (self._ticks0 + self.ms) & (TICKS_PERIOD - 1)

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("time only moves forward")
        self.ms += ms

    def set_wall(self, epoch_s: int) -> None:
        self._wall0 = epoch_s - self.ms // 1000

    def wall(self) -> int:
        """Epoch seconds, or 0 while the wall clock is not set (the firmware's convention)."""
        return 0 if self._wall0 is None else self._wall0 + self.ms // 1000
