"""Days of realistic use, scripted: brews of several kinds, rinses, the odd contact bounce
(`_day`), and `count_days`, which plays N of them into the counting core alone on the
virtual clock, with a filter change when due (`brewmeter bench`'s sim_days_per_s). The
`brewmeter simulate` command is the household year (household.py), which takes its days
from here."""

from __future__ import annotations

import calendar
import itertools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from brewmeter.scenario import Script, Truth, play

if TYPE_CHECKING:  # the firmware: imported where used (see profiles.py)
    from app.counters import Counters
    from app.meter import Meter
    from app.profile import Profile

START_WALL = calendar.timegm((2026, 1, 5, 0, 0, 0))  # a Monday, 00:00 UTC
DAY_MS = 86_400_000
# kind -> (weight, ml, seconds); kinds a board lacks are skipped.
DRINKS = {
    "espresso": (6, 40, 25),
    "lungo": (3, 110, 40),
    "hot_water": (1, 200, 15),
}


@dataclass
class Result:
    profile: Profile
    meter: Meter
    truth: Truth
    days: int
    wall: int
    filter_changes: int


def _day(script: Script, rng: random.Random, weekday: int, scale: float = 1.0) -> None:
    """A day of an office's use; `scale` multiplies the brews (0: nobody there)."""
    kinds = [k for k in script.profile.kinds if k in DRINKS] or list(script.profile.kinds)
    # (cumulative once a day, not per brew: rng.choices draws the same with either)
    cum = list(itertools.accumulate(DRINKS.get(k, (1,))[0] for k in kinds))
    brews = max(0, round(scale * (rng.gauss(14, 4) if weekday < 5 else rng.gauss(5, 2))))
    day0 = script.t
    script.wait(7 * 3_600_000 + rng.randrange(3_600_000))  # first use from 07:00
    if brews:
        script.rinse(rng.uniform(2, 5), ml=rng.uniform(20, 60))  # morning rinse
    for _ in range(brews):
        kind = rng.choices(kinds, cum_weights=cum)[0]
        _, ml, seconds = DRINKS.get(kind, (1, 100, 20))
        if rng.random() < 0.1:
            script.bounce(kind, rng.randrange(5, script.profile.debounce_ms))
        script.brew(kind, ml * rng.uniform(0.9, 1.1), seconds * rng.uniform(0.8, 1.2))
        script.wait(rng.randrange(60_000, 2_400_000))
    if brews and rng.random() < 0.5:
        script.rinse(rng.uniform(1, 4))
    script.wait(max(0, day0 + DAY_MS - script.t))
    script.powered(DAY_MS // 1000)  # always on: a day of powered time for the filter age


def count_days(profile: Profile, days: int, seed: int = 0) -> Result:
    from app import waterfilter
    from app.meter import Meter

    rng = random.Random(seed)
    meter = Meter(profile)
    meter.boot(1)
    c = meter.c
    script = Script(profile)
    changes = 0
    waterfilter.set_wall(c, START_WALL)
    for d in range(days):  # a day at a time keeps the timeline small
        _day(script, rng, d % 7)
        play(meter, script.events)  # the first day's timeline starts with power-on
        script.events.clear()
        wall = START_WALL + script.t // 1000
        if waterfilter.due(c, profile, wall):  # the owner fits a new filter that evening
            waterfilter.change(c, wall, "owner")
            changes += 1
    play(meter, script.settle().events)
    return Result(profile, meter, script.truth, days, START_WALL + script.t // 1000, changes)


def summary(r: Result) -> dict:
    return counters_summary(r.meter.c, r.profile, r.days, r.wall)


def counters_summary(c: Counters, profile: Profile, days: int, wall: int,
                     dh: int = 10) -> dict:
    """The counters after `days` at `wall`, with the filter's age and due state (water of
    `dh` degrees)."""
    from app import readout, waterfilter

    d = readout.counters(c, profile.kinds)
    d["days"] = days
    d["board"] = profile.board
    d["filter_age_days"] = round(waterfilter.age_s(c, wall) / 86400, 1)
    d["filter_due"] = waterfilter.due(c, profile, wall, dh)
    return d


def table(d: dict) -> str:
    """The counters as a readable two-column table."""
    rows = [
        ("board", d["board"]),
        ("days simulated", d["days"]),
        ("brews", d["brews_total"]),
        *((f"  {k}", v) for k, v in d["brews"].items()),
        ("rinses", d["rinses"]),
        ("stuck pump runs", d["stuck_runs"]),
        ("water", f"{d['water_ml'] / 1000:.1f} L"),
        ("  with no pump on", f"{d['idle_ml'] / 1000:.1f} L"),
        ("pump run time", f"{d['pump_ms'] / 3_600_000:.2f} h"),
        ("boots", d["boots"]),
        ("filter changes", d["filters"]),
        ("current filter", f"{d['filter_ml'] / 1000:.1f} L, "
         f"{d['filter_pump_ms'] / 3_600_000:.2f} pump h, {d['filter_brews']} brews, "
         f"{d['filter_age_days']} days old"),
        ("filter due", d["filter_due"] or "no"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)

