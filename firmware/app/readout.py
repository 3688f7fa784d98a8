# The counters read out as plain dicts, for the console and the reports: loaded only by those,
# so the always-resident counting core stays small.
from app.counters import RESET_CAUSES


def counters(c, kinds):
    """A JSON-ready snapshot of Counters `c`: brews by kind name, resets by cause name."""
    d = {}
    for k, v in c.__dict__.items():
        if k not in ("brews", "resets"):
            d[k] = v
    d["brews"] = b = {}  # (loops, not comprehensions: each of those is code held on the heap)
    for i in range(len(kinds)):
        b[kinds[i]] = c.brews[i]
    d["brews_total"] = c.total_brews()
    d["resets"] = r = {}
    for i, n in enumerate(c.resets):
        if n:
            r[RESET_CAUSES[i]] = n
    return d


# Device-side bookkeeping in the Counters, not usage: neither reported nor shown as counters.
BOOKKEEPING = ("filter_fit_wall", "filter_powered_s", "last_reset", "resets", "day",
               "day_brews", "prev_day", "prev_brews", "undated_boot", "undated_brews")


def usage(c, kinds):
    """counters() less the bookkeeping: what the cloud gets and the console shows. Pump
    times as the record keeps them (10 ms units, app/counters.py): what a reboot drops was
    never shown, so none goes back after it (the cloud's counter_regression)."""
    d = counters(c, kinds)
    for k in BOOKKEEPING:
        d.pop(k, None)
    for k in ("pump_ms", "filter_pump_ms"):
        d[k] -= d[k] % 10
    return d
