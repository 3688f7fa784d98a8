# The one module that touches hardware. The emulated board and the CPython harness stand in
# for `machine`; nothing else in the firmware imports it.
import machine


def input_pin(gpio, active_low):
    if active_low:  # the optocoupler pulls down; the pin idles high
        return machine.Pin(gpio, machine.Pin.IN, machine.Pin.PULL_UP)
    return machine.Pin(gpio, machine.Pin.IN)


def reset_cause():
    return machine.reset_cause()


def reset():
    machine.reset()


def watchdog(timeout_ms):
    """The chip's watchdog, started: once started it cannot be stopped (only a hard reset
    does), and resets the chip unless fed within `timeout_ms`."""
    return machine.WDT(timeout=timeout_ms)


class PulseCounter:
    """Flow-meter pulses. The ESP32's PCNT unit (machine.Counter, MicroPython >= 1.26)
    counts in hardware, so none are lost at 2 kHz while Python is busy; boards or firmware
    without it fall back to a pin IRQ."""

    def __init__(self, gpio, unit=0):
        pin = machine.Pin(gpio, machine.Pin.IN)
        self._n = 0
        try:
            self._counter = machine.Counter(unit, pin, edge=machine.Counter.RISING)
        except (AttributeError, ValueError, OSError):
            self._counter = None
            pin.irq(self._edge, machine.Pin.IRQ_RISING)

    def _edge(self, _pin):
        self._n += 1  # IRQ context: no allocation

    def take(self):
        """Pulses since the last call."""
        if self._counter is not None:
            return self._counter.value(0)  # read and zero in one call: no pulse falls between
        state = machine.disable_irq()
        n = self._n
        self._n = 0
        machine.enable_irq(state)
        return n
