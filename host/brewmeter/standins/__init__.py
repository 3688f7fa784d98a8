"""CPython stand-ins for the MicroPython modules the firmware imports, so the same firmware
source runs in the harness. `install()` once per process; tests swap the clock and pins."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from brewmeter.clock import VirtualClock, ticks_add, ticks_diff

REPO = Path(__file__).resolve().parents[3]
FIRMWARE = REPO / "firmware"

clock = VirtualClock()


def _ticks_ms() -> int:
    return clock.ticks_ms()


async def _sleep_ms(ms: int) -> None:
    await asyncio.sleep(ms / 1000)


def install() -> None:
    """Make `import machine`, `import micropython`, time.ticks_* and asyncio.sleep_ms work
    for the firmware under CPython, and put firmware/ on sys.path."""
    from brewmeter.standins import machine, micropython

    sys.modules.setdefault("machine", machine)
    sys.modules.setdefault("micropython", micropython)
    # CPython's time has no ticks_*: adding them touches nothing CPython itself uses.
    time.ticks_ms = _ticks_ms  # type: ignore[attr-defined]
    time.ticks_diff = ticks_diff  # type: ignore[attr-defined]
    time.ticks_add = ticks_add  # type: ignore[attr-defined]
    asyncio.sleep_ms = _sleep_ms  # type: ignore[attr-defined]
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))


def set_clock(new: VirtualClock) -> None:
    global clock
    clock = new
