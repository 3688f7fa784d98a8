# The service button: a long press means "a new filter is fitted" (a tech's hands are busy
# with the filter, not a laptop). Pure: levels and times come in, as with the pump inputs.
from time import ticks_diff

from micropython import const

from app.meter import Input

LONG_MS = const(3000)  # held this long: a deliberate press, not a brush against the panel


class LongPress:
    def __init__(self, debounce_ms):
        self.inp = Input(debounce_ms)
        self.armed = False  # pressed since power-on: a button held at boot never fires

    def sample(self, level, now):
        """Feed the button's level (1 = pressed). True once per press, LONG_MS into it."""
        inp = self.inp
        t = inp.sample(level, now)
        if t is not None:
            inp.start = t
            self.armed = bool(inp.on)
        if self.armed and ticks_diff(now, inp.start) >= LONG_MS:
            self.armed = False
            return True
        return False
