# `machine` for the emulated ESP32 (host/brewmeter/emulator/). It runs inside the MicroPython
# unix port and shadows the built-in `machine` by coming earlier on sys.path (the ESP32 port
# itself does the same: its frozen machine.py wraps the C module to add Counter).
#
# Fake hardware lives here, never in firmware/: pin levels and flow pulses come from the
# supervisor over the bus (machine_bus.py beside this file); the watchdog, the timers and the
# pulse counter are in machine_timers.py and machine_counter.py.
import time

import machine_bus as _bus
import machineconsts as _c
from machine_counter import Counter  # noqa: F401
from machine_timers import RTC, WDT, Timer  # noqa: F401
from machineconsts import (  # noqa: F401 - machine's own names
    DEEPSLEEP_RESET,
    HARD_RESET,
    PWRON_RESET,
    SOFT_RESET,
    WDT_RESET,
)

_freq = 160000000  # MicroPython's default CPU clock on the ESP32


class Pin(_c.Pin):

    def __init__(self, id, mode=-1, pull=-1, *, value=None, **kw):
        self._id = id
        self._mode = Pin.IN
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None, **kw):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            _bus._pulls[self._id] = pull
        if value is not None:
            self.value(value)

    def value(self, x=None):
        if x is None:
            _bus._poll()
            if self._mode == Pin.OUT:
                return _bus._outs.get(self._id, 0)
            return _bus._level(self._id)
        x = 1 if x else 0
        if _bus._outs.get(self._id) != x:
            _bus._outs[self._id] = x
            _bus._send(b"O %d %d\n" % (self._id, x))
        return None

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(1 - _bus._outs.get(self._id, 0))

    def mode(self, mode=None):
        if mode is None:
            return self._mode
        self._mode = mode

    def pull(self, pull=None):
        if pull is None:
            return _bus._pulls.get(self._id)
        _bus._pulls[self._id] = pull

    def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
        if handler is None:
            _bus._irqs.pop(self._id, None)
        else:
            _bus._irqs[self._id] = (self, handler, trigger)

    def __repr__(self):
        return "Pin(%d)" % self._id


def dupterm(stream=None, index=0):
    # os.dupterm, which the unix port lacks: `stream`.write() is called whenever the serial
    # port shows output (the supervisor says so over the bus, "A"), as the ESP32's REPL
    # writes its output to every dupterm stream. Returns the previous stream.
    prev, _bus._term = _bus._term, stream
    return prev


def reset_cause():
    return _bus._cause


def reset():
    _bus._halt(b"B\n")


def soft_reset():
    # As on the ESP32: a SystemExit, which main.py or the REPL turns into a soft reboot.
    raise SystemExit


def deepsleep(time_ms=0):
    _bus._halt(b"D %d\n" % time_ms)


def lightsleep(time_ms=None):
    if time_ms is not None:
        time.sleep_ms(time_ms)
    _bus._poll()


sleep = lightsleep


def unique_id():
    return _bus._uid


def freq(hz=None):
    global _freq
    if hz is None:
        return _freq
    if hz // 1000000 not in (20, 40, 80, 160, 240):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _freq = hz


def idle():
    _bus._poll()


def disable_irq():
    _bus._poll()  # an edge that came before the critical section runs its handler first
    return 0


def enable_irq(state=0):
    pass
