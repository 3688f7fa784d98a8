# The sensor shell: polls the pump-sense inputs and the flow counter and feeds the Meter.
import asyncio
from time import ticks_diff, ticks_ms

from micropython import const

from app import hw
from app.device import Device
from app.meter import NOTHING, Input

POLL_MS = const(10)  # well under any debounce_ms a profile allows, so edges date to +-10 ms
LONG_MS = const(3000)  # the button held this long: a deliberate press, not a brush against it


class Sensors:
    """`device` has the Meter as .meter, .event(code, input, now) for what the Meter reports
    (BREW, RINSE, STUCK, IGNORED), .count_tick(now) after every poll and .refill() for the
    button. (Annotated: pyright checks those calls against the Device; MicroPython ignores
    annotations.)"""

    def __init__(self, profile, device: Device):
        self.device = device
        self.meter = device.meter
        self.pins = []  # (a loop, not a comprehension: that is code held on the heap)
        for g in profile.input_pins:
            self.pins.append(hw.input_pin(g, profile.active_low))
        self.invert = 1 if profile.active_low else 0
        self.flow = hw.PulseCounter(profile.flow_pin)
        gpio = getattr(profile, "button_pin", None)
        # The button pulls its pin low against the pull-up, whatever the pump inputs do.
        self.button = hw.input_pin(gpio, True) if gpio is not None else None
        self.pressed = Input(profile.debounce_ms)
        self.armed = False  # pressed since power-on: a button held at boot never fires

    def poll(self, now):
        meter = self.meter
        device = self.device
        pins = self.pins
        for i in range(len(pins)):  # (enumerate() would allocate an iterator every poll)
            r = meter.sample(i, pins[i].value() ^ self.invert, now)
            if r != NOTHING:
                device.event(r, i, now)
        meter.pulses(self.flow.take())
        r = meter.poll(now)
        if r != NOTHING:
            device.event(r, -1, now)
        device.count_tick(now)

    def press(self, now):
        """The service button (its own task: a filter change saves and may order, which the
        counting must not wait for): a long press means "a new filter is fitted" (a tech's
        hands are busy with the filter, not a laptop); once per press, LONG_MS into it."""
        if not self.button:
            return
        inp = self.pressed
        t = inp.sample(1 - self.button.value(), now)
        if t is not None:
            inp.start = t
            self.armed = bool(inp.on)
        if self.armed and ticks_diff(now, inp.start) >= LONG_MS:
            self.armed = False
            self.device.refill("filter", "button", now)

    async def run(self, wdt=None):
        """The counting. Only it feeds the watchdog, after each completed poll: a stalled
        event loop or a dead sensor task resets the board."""
        while True:
            self.poll(ticks_ms())
            if wdt is not None:
                wdt.feed()
            await asyncio.sleep_ms(POLL_MS)

    async def run_button(self):
        while True:
            self.press(ticks_ms())
            await asyncio.sleep_ms(POLL_MS * 2)
