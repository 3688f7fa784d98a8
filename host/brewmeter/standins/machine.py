"""Stand-in for MicroPython's `machine` under CPython: GPIO levels and flow pulses are set by
the harness (`set_level`, `add_pulses`), as the sensors would on a real board."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from brewmeter.onmicropython.esp32 import machineconsts as _c
from brewmeter.onmicropython.esp32.machineconsts import (  # noqa: F401 - machine's own names
    DEEPSLEEP_RESET,
    HARD_RESET,
    PWRON_RESET,
    SOFT_RESET,
    WDT_RESET,
)

_levels: dict[int, int] = {}
_pins: dict[int, Pin] = {}
_reset_cause = PWRON_RESET


class Pin(_c.Pin):
    def __init__(self, gpio: int, mode: int = _c.Pin.IN, pull: int | None = None) -> None:
        self.gpio = gpio
        self.pull = pull
        self._irq: tuple[Callable[[Pin], None], int] | None = None
        # An unconnected input with a pull-up reads 1.
        _levels.setdefault(gpio, 1 if pull == Pin.PULL_UP else 0)
        _pins[gpio] = self

    def value(self, v: int | None = None) -> int:
        if v is not None:
            set_level(self.gpio, v)
        return _levels[self.gpio]

    def irq(self, handler: Callable[[Pin], None], trigger: int) -> None:
        self._irq = (handler, trigger)


class Counter(_c.Counter):
    def __init__(self, unit: int, src: Pin, edge: int = _c.Counter.RISING) -> None:
        self.src = src
        self._value = 0
        _counters[src.gpio] = self

    def value(self, reset: int | None = None) -> int:
        v = self._value
        if reset is not None:
            self._value = reset
        return v


_counters: dict[int, Counter] = {}


def set_level(gpio: int, level: int) -> None:
    old = _levels.get(gpio, 0)
    _levels[gpio] = 1 if level else 0
    pin = _pins.get(gpio)
    if pin and pin._irq and old != _levels[gpio]:
        handler, trigger = pin._irq
        if trigger & (Pin.IRQ_RISING if level else Pin.IRQ_FALLING):
            handler(pin)


def add_pulses(gpio: int, n: int) -> None:
    if gpio in _counters:
        _counters[gpio]._value += n
        return
    for _ in range(n):  # no hardware counter: the pin IRQ sees every edge
        set_level(gpio, 1)
        set_level(gpio, 0)


def reset_cause() -> int:
    return _reset_cause


def set_reset_cause(cause: int) -> None:
    global _reset_cause
    _reset_cause = cause


def reset_pins() -> None:
    """Forget all pins (a new emulated power-on)."""
    _levels.clear()
    _pins.clear()
    _counters.clear()


def disable_irq() -> int:
    return 0


def enable_irq(state: int) -> None:
    pass


def unique_id() -> bytes:
    return b"\x24\x0a\xc4\x00\x00\x01"


class WDT:
    """The watchdog, counted: the harness has no chip to reset."""

    feeds = 0

    def __init__(self, id: int = 0, timeout: int = 5000) -> None:
        self.timeout = timeout

    def feed(self) -> None:
        WDT.feeds += 1


class Timer(_c.Timer):
    """A timer whose callback the test calls (`fire()`): the harness runs on its own clock.
    A hardware timer (id >= 0) is one whichever object drives it, as the ESP32's."""

    def __init__(self, id: int = -1, **kwargs: Any) -> None:
        self.id = id
        self.callback: Callable[[Timer], None] | None = None
        if kwargs:
            self.init(**kwargs)

    def init(self, mode: int = _c.Timer.PERIODIC, period: int = -1,
             callback: Callable[[Timer], None] | None = None) -> None:
        self.deinit()
        self.callback = callback
        if callback is not None and self not in _timers:
            _timers.append(self)

    def fire(self) -> None:
        if self.callback is not None:
            self.callback(self)

    def deinit(self) -> None:
        for t in [t for t in _timers if t is self or 0 <= self.id == t.id]:
            t.callback = None
            _timers.remove(t)
        self.callback = None


_timers: list[Timer] = []


def timers() -> list[Timer]:
    """The timers running (given a callback and not deinit): for a test to fire."""
    return list(_timers)


_term: Any = None


def dupterm(stream: Any = None, index: int = 0) -> Any:
    """os.dupterm's stand-in (as the emulated board's machine has it)."""
    global _term
    prev, _term = _term, stream
    return prev


def term() -> Any:
    """The stream dupterm() attached (None: none), which the REPL's output would reach."""
    return _term
