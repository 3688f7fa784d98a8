# machine.Counter for the emulated ESP32 (machine.py beside this file imports it into
# `machine`), where the sensor loop's polls are timed: it reads the counter once a poll, so
# the longest gap between two polls is measured here, costing the firmware nothing; sent
# when the supervisor asks ("G" on the bus). Inside the MicroPython unix port, as machine.py.
import time

import machine
import machineconsts as _c

_gap_last = None
_gap_max = 0
_gap_polls = 0


def gap_report():
    global _gap_max, _gap_polls
    machine._send(b"G %d %d\n" % (_gap_max, _gap_polls))
    _gap_max = _gap_polls = 0


def _gap_tick():
    # Allocates nothing (small ints only): poll_alloc_bytes runs through here too.
    global _gap_last, _gap_max, _gap_polls
    now = time.ticks_ms()
    if _gap_last is not None:
        g = time.ticks_diff(now, _gap_last)
        if g > _gap_max:
            _gap_max = g
    _gap_last = now
    _gap_polls += 1


class Counter(_c.Counter):
    # machine.Counter as the ESP32 port has it since MicroPython 1.26
    # (ports/esp32/modules/machine.py): a singleton per PCNT unit, value([value]).
    _INSTANCES = {}

    def __new__(cls, unit_id, *args, **kwargs):
        self = cls._INSTANCES.get(unit_id)
        if self is None:
            self = object.__new__(cls)
            cls._INSTANCES[unit_id] = self
        return self

    def __init__(self, unit_id, *args, filter_ns=0, **kwargs):
        self._unit_id = unit_id
        if getattr(self, "_gpio", None) is not None and not (args or kwargs):
            return  # the existing singleton, unchanged
        self._configure(*args, **kwargs)

    def _configure(self, src, edge=_c.Counter.RISING, direction=_c.Counter.UP):
        self.deinit()
        self._gpio = src._id if isinstance(src, machine.Pin) else src
        edges = (1 if edge & Counter.RISING else 0) + (1 if edge & Counter.FALLING else 0)
        self._per_pulse = -edges if direction == Counter.DOWN else edges
        self._v = 0
        machine._counters.setdefault(self._gpio, []).append(self)

    def init(self, *args, **kwargs):
        self.__init__(self._unit_id, *args, **kwargs)

    def deinit(self):
        g = getattr(self, "_gpio", None)
        if g is not None:
            machine._counters[g].remove(self)
            self._gpio = None

    def value(self, value=None):
        if getattr(self, "_gpio", None) is None:
            raise RuntimeError("not initialised")
        _gap_tick()
        machine._poll()
        v = self._v
        if value is not None:
            self._v = value
        return v
