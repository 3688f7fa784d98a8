"""The sensor shell (app.sensors) on the CPython stand-in for `machine`: pin levels and flow
pulses set as hardware would, polled every 10 ms on the virtual clock."""

from __future__ import annotations

import pytest
from app.meter import BREW, RINSE, Meter
from app.sensors import POLL_MS, Sensors
from brewmeter import standins
from brewmeter.clock import VirtualClock
from brewmeter.standins import machine


class Recorder:
    """What app.device.Device gets from the sensor task, recorded."""

    def __init__(self, profile) -> None:
        self.meter = Meter(profile)
        self.events: list[tuple[int, int]] = []
        self.ticks = 0

    def event(self, code: int, i: int, now: int) -> None:
        self.events.append((code, i))

    def count_tick(self, now: int) -> None:
        self.ticks += 1

    def refill(self, name: str, by: str, now: int) -> None:
        self.events.append((name, by))


@pytest.fixture
def board(profile):
    machine.reset_pins()
    standins.set_clock(VirtualClock(ticks_start=(1 << 30) - 5_000))  # wraps during the test
    rec = Recorder(profile)
    sensors = Sensors(profile, rec)
    yield sensors, rec.meter, rec.events
    machine.reset_pins()


def _for(sensors, ms):
    for _ in range(ms // POLL_MS):
        standins.clock.advance(POLL_MS)
        sensors.poll(standins.clock.ticks_ms())
        sensors.press(standins.clock.ticks_ms())


def _set(profile, kind, on):
    gpio = profile.input_pins[profile.kinds.index(kind)]
    # The emulator profile is active-high; a real board's optocoupler pulls low.
    machine.set_level(gpio, (1 if on else 0) ^ (1 if profile.active_low else 0))


def test_polled_inputs_and_hardware_counter(profile, board):
    sensors, meter, events = board
    ppl = profile.pulses_per_litre
    _for(sensors, 100)
    _set(profile, "lungo", True)
    for _ in range(30):  # 30 s at 2 kHz: the PCNT counts them between polls
        machine.add_pulses(profile.flow_pin, 2000 * 1)
        _for(sensors, 1000)
    _set(profile, "lungo", False)
    _for(sensors, 200)
    _set(profile, "espresso", True)
    _for(sensors, 2000)
    _set(profile, "espresso", False)
    _for(sensors, 200)
    lungo, espresso = profile.kinds.index("lungo"), profile.kinds.index("espresso")
    assert events == [(BREW, lungo), (RINSE, espresso)]
    assert meter.c.water_ml == 60_000 * 1000 // ppl
    assert abs(meter.c.pump_ms - 32_000) <= POLL_MS * 2


def test_irq_fallback_loses_no_pulse(profile, board, monkeypatch):
    monkeypatch.delattr(machine, "Counter")  # a board whose firmware lacks machine.Counter
    machine.reset_pins()
    sensors = Sensors(profile, Recorder(profile))
    meter = sensors.meter
    assert sensors.flow._counter is None
    machine.add_pulses(profile.flow_pin, 1925)
    _for(sensors, 50)
    assert meter.c.water_ml == 1000


def test_active_low_board(board):
    from brewmeter.profiles import load_profile

    profile = load_profile("esp32-generic")
    machine.reset_pins()
    sensors = Sensors(profile, Recorder(profile))
    meter = sensors.meter
    _for(sensors, 100)  # pull-ups: idle inputs read 1 = off
    assert not meter.pumping()
    _set(profile, "espresso", True)
    _for(sensors, 10_000)
    _set(profile, "espresso", False)
    _for(sensors, 100)
    assert meter.c.total_brews() == 1


def test_a_long_press_on_the_service_button_changes_the_filter(profile, board):
    sensors, _, events = board
    button = profile.button_pin
    _for(sensors, 100)
    machine.set_level(button, 0)  # pressed: the button pulls the pin low
    _for(sensors, 2500)
    machine.set_level(button, 1)  # a short press does nothing
    _for(sensors, 500)
    machine.set_level(button, 0)
    _for(sensors, 3100)
    assert events == [("filter", "button")]
    _for(sensors, 5000)  # held on: once per press
    machine.set_level(button, 1)
    _for(sensors, 100)
    assert events == [("filter", "button")]


def test_a_button_held_at_power_on_never_fires(profile):
    machine.reset_pins()
    machine.set_level(profile.button_pin, 0)
    rec = Recorder(profile)
    sensors = Sensors(profile, rec)
    _for(sensors, 5000)
    assert rec.events == []
    machine.reset_pins()
