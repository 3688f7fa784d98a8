# Water-filter accounting: age, when it is due, and the filter change that closes a cycle.
# Pure: wall time (epoch seconds, 0 = clock not set yet) is always an argument.
from micropython import const

_MONTH_S = const(2629746)  # average Gregorian month


def set_wall(c, wall):
    """Once the wall clock is known, date a filter fitted while it was not: fitted
    `filter_powered_s` ago (the device cannot know how long it was off meanwhile)."""
    if wall and not c.filter_fit_wall:
        c.filter_fit_wall = wall - c.filter_powered_s


def age_s(c, wall):
    if wall and c.filter_fit_wall:
        return max(0, wall - c.filter_fit_wall)
    return c.filter_powered_s


def due(c, profile, wall, dh=10):
    """'litres' or 'age' when the filter is spent (whichever comes first), else None.
    Profiles rate filter_litres at 10 dH; harder water (`dh`) spends it sooner."""
    if c.filter_ml * dh >= profile.filter_litres * 10000:
        return "litres"
    if age_s(c, wall) >= profile.filter_months * _MONTH_S:
        return "age"
    return None


def change(c, wall, source):
    """Fit a new filter: start a new cycle and return the event that records the closed
    one. `source` says who did it (console, button, cloud)."""
    event = {
        "kind": "filter_changed",
        "cycle": c.filters,
        "by": source,
        "ml": c.filter_ml,
        "pump_ms": c.filter_pump_ms,
        "brews": c.filter_brews,
        "age_s": age_s(c, wall),
        "wall": wall,
    }
    c.filters += 1
    c.filter_ml = c.filter_pump_ms = c.filter_brews = c.filter_powered_s = 0
    c.filter_fit_wall = wall
    return event
