"""Every counting rule of the core, driven by the scripted sensor driver on a virtual clock."""

from __future__ import annotations

import random

import pytest
from app import waterfilter
from app.meter import BREW, IGNORED, NOTHING, RINSE, STUCK, Meter
from brewmeter.scenario import Script, play


def run(meter, script):
    play(meter, script.settle().events)
    return meter.c


def brews(meter):
    return dict(zip(meter.profile.kinds, meter.c.brews, strict=False))


def test_brew_at_min_brew_s_counts_and_just_under_is_a_rinse(profile, meter):
    s = Script(profile).run("espresso", profile.min_brew_s)
    s.run("espresso", profile.min_brew_s - 0.05)
    c = run(meter, s)
    assert c.total_brews() == 1 and c.brews[profile.kinds.index("espresso")] == 1
    assert c.rinses == 1


def test_brews_are_counted_per_kind_and_in_total(profile, meter):
    s = Script(profile)
    for kind, n in (("espresso", 3), ("lungo", 2), ("hot_water", 1)):
        for _ in range(n):
            s.brew(kind, 50, 20).wait(5000)
    c = run(meter, s)
    assert brews(meter) == {"espresso": 3, "lungo": 2, "hot_water": 1}
    assert c.total_brews() == 6 == c.filter_brews
    assert c.rinses == 0 and c.stuck_runs == 0


def test_bounce_shorter_than_debounce_is_ignored(profile, meter):
    s = Script(profile)
    for _ in range(20):
        s.bounce("lungo", profile.debounce_ms - 5, edges=8).wait(1000)
    c = run(meter, s)
    assert c.total_brews() == 0 and c.rinses == 0 and c.pump_ms == 0


def test_bounce_at_start_and_end_of_a_brew_counts_one_brew_of_the_right_length(profile, meter):
    s = Script(profile)
    # Contact chatter for 15 ms, then held for 25 s, then chatter on release.
    for k, level in enumerate((1, 0, 1, 0, 1)):
        s.level("espresso", level, after_ms=3 * k)
    s.wait(15 + 25_000)
    for k, level in enumerate((0, 1, 0, 1, 0)):
        s.level("espresso", level, after_ms=3 * k)
    s.wait(15 + profile.debounce_ms + 10)
    c = run(meter, s)
    assert c.total_brews() == 1 and c.rinses == 0
    assert abs(c.pump_ms - 25_000) <= 15  # dated from the last edge of the chatter


def test_water_converts_pulses_without_drift(profile, meter):
    s = Script(profile)
    for _ in range(500):  # 500 brews of 37.3 ml: rounding per chunk must not accumulate
        s.brew("espresso", 37.3, 10)
    c = run(meter, s)
    assert abs(c.water_ml - 500 * 37.3) <= 1  # the meter resolves 0.52 ml
    assert c.filter_ml == c.water_ml and c.idle_ml == 0


def test_flow_with_no_pump_on_is_counted_as_idle_water(profile, meter):
    c = run(meter, Script(profile).idle_flow(120).brew("lungo", 100, 30))
    assert c.idle_ml == pytest.approx(120, abs=1)
    assert c.water_ml == pytest.approx(220, abs=1)
    assert c.total_brews() == 1


def test_pump_time_is_exact_and_accrues_while_running(profile, meter):
    s = Script(profile).brew("lungo", 100, 40)
    c = run(meter, s)
    assert c.pump_ms == 40_000 == c.filter_pump_ms
    # Mid-run, poll() has already added the time so far (what a periodic flush persists).
    m2 = Meter(profile)
    t0 = 1000
    for i in range(len(profile.kinds)):
        m2.sample(i, 0, 0)
    m2.sample(0, 1, t0)
    m2.sample(0, 1, t0 + 50)
    m2.poll(t0 + 10_000)
    assert m2.c.pump_ms == 10_000
    assert m2.sample(0, 0, t0 + 20_000) == NOTHING  # release not yet debounced
    assert m2.sample(0, 0, t0 + 20_000 + profile.debounce_ms) == BREW
    assert m2.c.pump_ms == 20_000


def test_stuck_pump_is_a_fault_not_a_brew_and_still_wears_the_pump(profile, meter):
    events = []
    s = Script(profile).run("espresso", 3 * 3600)  # stuck on for three hours
    play_events = s.settle().events
    from brewmeter.onmicropython import replay

    for ev in sorted(play_events):
        replay.step(meter, *ev, on_event=lambda r, i: events.append(r))
    c = meter.c
    assert c.stuck_runs == 1 and c.total_brews() == 0 and c.rinses == 0
    assert events.count(STUCK) == 1 and events[-1] == IGNORED
    assert c.pump_ms == 3 * 3600 * 1000


def test_input_held_at_power_on_is_ignored_until_released(profile):
    m = Meter(profile)
    m.boot(1)
    s = Script(profile, held=("lungo",)).wait(20_000)
    s.level("lungo", 0)  # released 20 s after power-on: its start is unknown, not a brew
    s.wait(1000).brew("lungo", 100, 30)
    play(m, s.settle().events)
    assert m.c.total_brews() == 1 and m.c.rinses == 0 and m.c.stuck_runs == 0


def test_ticks_wrapping_mid_brew_changes_nothing(profile):
    # Start the script 10 s before ticks_ms wraps (2**30 ms, about 12.4 days).
    m = Meter(profile)
    s = Script(profile, start_ms=(1 << 30) - 10_000).brew("espresso", 40, 25).rinse(2)
    play(m, s.settle().events)
    assert m.c.total_brews() == 1 and m.c.rinses == 1
    assert m.c.pump_ms == 27_000


def test_filter_change_closes_the_cycle_and_keeps_lifetime_counters(profile, meter):
    c = run(meter, Script(profile).brew("espresso", 40).brew("lungo", 110, 40).powered(3600))
    before = (c.total_brews(), c.water_ml, c.pump_ms)
    event = waterfilter.change(c, 1_767_571_200, "console")
    assert event == {
        "kind": "filter_changed", "cycle": 0, "by": "console", "ml": before[1],
        "pump_ms": before[2], "brews": 2, "age_s": 3600, "wall": 1_767_571_200,
    }
    assert (c.filter_ml, c.filter_pump_ms, c.filter_brews, c.filter_powered_s) == (0, 0, 0, 0)
    assert c.filters == 1 and c.filter_fit_wall == 1_767_571_200
    assert (c.total_brews(), c.water_ml, c.pump_ms) == before


def test_filter_age_uses_powered_time_until_the_wall_clock_is_known(profile, meter):
    c = meter.c
    waterfilter.change(c, 0, "button")  # fitted before NTP ever answered
    meter.powered(7200)
    assert waterfilter.age_s(c, 0) == 7200
    waterfilter.set_wall(c, 1_800_000_000)  # clock now known: fitted 2 h ago
    assert c.filter_fit_wall == 1_800_000_000 - 7200
    assert waterfilter.age_s(c, 1_800_000_000 + 86400) == 86400 + 7200
    waterfilter.set_wall(c, 1_900_000_000)  # later clock updates do not move the fit date
    assert c.filter_fit_wall == 1_800_000_000 - 7200


def test_filter_is_due_by_litres_or_by_age_whichever_first(profile, meter):
    c = meter.c
    wall = 1_800_000_000
    waterfilter.change(c, wall, "owner")
    assert waterfilter.due(c, profile, wall) is None
    c.filter_ml = profile.filter_litres * 1000
    assert waterfilter.due(c, profile, wall) == "litres"
    c.filter_ml = 0
    months = wall + int(profile.filter_months * 30.44 * 86400) + 86400
    assert waterfilter.due(c, profile, months) == "age"


def test_boots_and_reset_causes(profile):
    from app import readout

    m = Meter(profile)
    for cause in (1, 5, 5, 3, 99):  # power-on, soft, soft, watchdog, something unknown
        m.boot(cause)
    assert m.c.boots == 5 and m.c.last_reset == 0
    assert readout.counters(m.c, profile.kinds)["resets"] == {
        "unknown": 1, "power_on": 1, "soft": 2, "watchdog": 1}


@pytest.mark.parametrize("seed", range(5))
def test_random_use_matches_ground_truth_and_counters_only_grow(profile, seed):
    rng = random.Random(seed)
    m = Meter(profile)
    s = Script(profile)
    lifetime = ("rinses", "stuck_runs", "water_ml", "idle_ml", "pump_ms", "filters")
    last = {k: 0 for k in lifetime}
    last_brews = [0] * len(m.c.brews)
    for _ in range(60):
        s.random_step(rng, max_wait_ms=600_000)
        play(m, s.events)
        s.events.clear()
        for k in lifetime:
            assert getattr(m.c, k) >= last[k]
            last[k] = getattr(m.c, k)
        assert all(a >= b for a, b in zip(m.c.brews, last_brews, strict=True))
        last_brews = list(m.c.brews)
    play(m, s.settle().events)
    t = s.truth
    assert brews(m) == {k: t.brews.get(k, 0) for k in profile.kinds}
    assert m.c.rinses == t.rinses and m.c.stuck_runs == t.stuck_runs
    assert m.c.water_ml == t.water_ml
    assert m.c.pump_ms == t.pump_ms


def test_sample_results_tell_the_shell_what_to_persist(profile):
    m = Meter(profile)
    for i in range(len(profile.kinds)):
        m.sample(i, 0, 0)
    m.sample(1, 1, 100)
    assert m.sample(1, 1, 100 + profile.debounce_ms) == NOTHING
    m.sample(1, 0, 20_000)
    assert m.sample(1, 0, 20_000 + profile.debounce_ms) == BREW and m.last_kind == 1
    m.sample(1, 1, 30_000)
    m.sample(1, 1, 30_000 + profile.debounce_ms)
    m.sample(1, 0, 31_000)
    assert m.sample(1, 0, 31_000 + profile.debounce_ms) == RINSE


@pytest.mark.parametrize("seed", range(3))
def test_a_days_water_in_one_flow_event_per_run_counts_as_in_2_s_chunks(profile, seed):
    """The fleet scripts each run's pulses as one event at its end (Script pulse_chunk_ms):
    the pump's release is still being debounced then, so the same water, brews and pump
    time are counted as with a chunk every 2 s."""
    from brewmeter.runs.usage import DAY_MS, _day
    from brewmeter.scenario import PULSE_CHUNK_MS

    counted = []
    for chunk in (PULSE_CHUNK_MS, DAY_MS):
        m = Meter(profile)
        s = Script(profile, pulse_chunk_ms=chunk)
        _day(s, random.Random(seed), seed)
        play(m, s.settle().events)
        c = m.c
        counted.append((list(c.brews), c.rinses, c.water_ml, c.idle_ml, c.filter_ml, c.pump_ms))
    assert counted[0] == counted[1]
    assert sum(counted[0][0]) > 0 and counted[0][2] > 0 and counted[0][3] == 0
