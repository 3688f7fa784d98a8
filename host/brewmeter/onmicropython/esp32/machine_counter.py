# machine.Counter for the emulated ESP32 (machine.py beside this file imports it into
# `machine`), where the sensor loop's polls are timed: it reads the counter once a poll, so
# the bus (machine_bus.py) measures the longest gap between two polls here, costing the
# firmware nothing. Inside the MicroPython unix port, as machine.py.
import machine_bus as _bus
import machineconsts as _c


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
        self._gpio = src._id if isinstance(src, _c.Pin) else src
        edges = (1 if edge & Counter.RISING else 0) + (1 if edge & Counter.FALLING else 0)
        self._per_pulse = -edges if direction == Counter.DOWN else edges
        self._v = 0
        _bus._counters.setdefault(self._gpio, []).append(self)

    def init(self, *args, **kwargs):
        self.__init__(self._unit_id, *args, **kwargs)

    def deinit(self):
        g = getattr(self, "_gpio", None)
        if g is not None:
            _bus._counters[g].remove(self)
            self._gpio = None

    def value(self, value=None):
        if getattr(self, "_gpio", None) is None:
            raise RuntimeError("not initialised")
        _bus._gap_tick()
        _bus._poll()
        v = self._v
        if value is not None:
            self._v = value
        return v
