"""CPython stand-ins for the MicroPython modules the firmware imports, so the same firmware
source runs in the harness. Installed by an explicit call (`install()`, or `installed()` for
a block), never on import; tests swap the clock and pins."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from brewmeter.clock import VirtualClock, ticks_add, ticks_diff

REPO = Path(__file__).resolve().parents[3]
FIRMWARE = REPO / "firmware"

clock = VirtualClock()
T = TypeVar("T")


def _ticks_ms() -> int:
    return clock.ticks_ms()


async def _sleep_ms(ms: int) -> None:
    await asyncio.sleep(ms / 1000)


def settle(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a firmware coroutine that awaits nothing but asyncio.sleep_ms(0) (the
    console's, a PIN check's slices), run to its end here, without an event loop."""
    try:
        while True:
            coro.send(None)
    except StopIteration as e:
        return e.value


_saved: list[tuple[object, str, object]] | None = None  # what install() replaced
_MISSING = object()


def install() -> None:
    """Make `import machine`, `import micropython`, time.ticks_* and asyncio.sleep_ms work
    for the firmware under CPython, and put firmware/ on sys.path: for the whole process
    until uninstall() (the `brewmeter` command, a test session). Nothing does this on
    import; `installed()` is the scoped form."""
    global _saved
    if _saved is not None:
        return
    from brewmeter.standins import machine, micropython

    # CPython's time has no ticks_*: adding them touches nothing CPython itself uses.
    patches: list[tuple[object, str, object]] = [
        (time, "ticks_ms", _ticks_ms), (time, "ticks_diff", ticks_diff),
        (time, "ticks_add", ticks_add), (asyncio, "sleep_ms", _sleep_ms)]
    _saved = []
    for obj, name, value in patches:
        _saved.append((obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)
    for name, mod in (("machine", machine), ("micropython", micropython)):
        _saved.append((sys.modules, name, sys.modules.get(name, _MISSING)))
        sys.modules.setdefault(name, mod)
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
        _saved.append((sys.path, str(FIRMWARE), _MISSING))


def uninstall() -> None:
    """Undo install(): time, asyncio, sys.modules and sys.path as they were, and the
    firmware's modules (`app`, `app.*`) forgotten, since they hold the stand-ins."""
    global _saved
    if _saved is None:
        return
    for obj, name, old in reversed(_saved):
        if obj is sys.path:
            if name in sys.path:
                sys.path.remove(name)
        elif obj is sys.modules:
            if old is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old  # type: ignore[assignment]
        elif old is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, old)
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[name]
    _saved = None


def is_installed() -> bool:
    return _saved is not None


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """The stand-ins installed for the `with` block only (already installed: left so)."""
    had = is_installed()
    install()
    try:
        yield
    finally:
        if not had:
            uninstall()


def set_clock(new: VirtualClock) -> None:
    global clock
    clock = new
