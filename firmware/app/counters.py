# The counters: everything the machine has consumed, as plain integers, and their record on
# flash (app/journal.py writes it). Lifetime counters only grow. The filter_* ones cover the
# current filter cycle and restart only on an explicit filter change (see waterfilter.py),
# which records the values it closed.
import struct

from micropython import const

MAX_INPUTS = 4  # pump-sense inputs a board profile may have

# machine.reset_cause() values on the ESP32 port (PWRON, HARD, WDT, DEEPSLEEP, SOFT).
RESET_CAUSES = ("unknown", "power_on", "hard", "watchdog", "deepsleep", "soft")

FORMAT = const(3)  # bumped when a layout changes; older formats are migrated on load

# The counters, in the order they are packed: 92 bytes with header and CRC. Pump times are
# kept in 10 ms units (32 bits: 497 days of pumping; a reboot drops under 10 ms of it).
# Per-cause reset counts are 16-bit and saturate (see Meter.boot). Format 3 added the day
# buckets at the end; format 2 lacked them; format 1 (the first firmware's) had 32-bit stuck
# and reset counts and 64-bit pump times in ms.
# (Made when packed or unpacked: a table of them would be objects held on the heap for good.)
def _layout(fmt):
    if fmt == 1:
        return "<%dIIIIIQI%dIBHIQIII" % (MAX_INPUTS, len(RESET_CAUSES))
    if fmt != 2 and fmt != 3:
        raise KeyError(fmt)
    # (4: MAX_INPUTS, 6: len(RESET_CAUSES), written out: pack_counters runs at every save)
    return "<4IIHIIII6HBHIIIII" + "6H" * (fmt - 2)


class Counters:
    def __init__(self):
        self.brews = [0] * MAX_INPUTS  # completed brews per input kind (profile order)
        self.rinses = 0  # pump runs shorter than min_brew_s: priming, rinsing
        self.stuck_runs = 0  # pump runs longer than max_run_s: a fault, never billed
        self.water_ml = 0  # all water through the flow meter
        self.idle_ml = 0  # of which flowed while no pump input was on (leak, tap, noise)
        self.pump_ms = 0  # summed run time of all pump inputs
        self.boots = 0
        self.resets = [0] * len(RESET_CAUSES)  # boots per reset cause
        self.last_reset = 0
        self.filters = 0  # filter changes so far = index of the current filter cycle
        self.filter_ml = 0
        self.filter_pump_ms = 0
        self.filter_brews = 0
        self.filter_fit_wall = 0  # epoch seconds the filter was fitted; 0 = not known yet
        self.filter_powered_s = 0  # powered-on seconds since fitted (age while clock unknown)
        # Brews by the day they happened (app/days.py), saved in the same write as the brew:
        self.day = 0  # the UTC day (days since 1970) that day_brews counts
        self.day_brews = 0
        self.prev_day = 0  # the day before, until the cloud has it
        self.prev_brews = 0
        self.undated_boot = 0  # the boot whose brews while the clock was unknown ...
        self.undated_brews = 0  # ... these count

    def total_brews(self):
        return sum(self.brews)


def pack_counters(c):
    return struct.pack(
        _layout(FORMAT), *c.brews, c.rinses, c.stuck_runs, c.water_ml, c.idle_ml,
        c.pump_ms // 10, c.boots, *c.resets, c.last_reset, c.filters, c.filter_ml,
        c.filter_pump_ms // 10, c.filter_brews, c.filter_fit_wall, c.filter_powered_s,
        c.day, min(c.day_brews, 0xFFFF), c.prev_day, min(c.prev_brews, 0xFFFF),
        c.undated_boot & 0xFFFF, min(c.undated_brews, 0xFFFF))


def unpack_counters(data, fmt=FORMAT):
    """Counters from a payload of format `fmt` (older formats migrate on the way in)."""
    v = struct.unpack(_layout(fmt), data)
    c = Counters()
    n = MAX_INPUTS
    c.brews = list(v[:n])
    (c.rinses, c.stuck_runs, c.water_ml, c.idle_ml, c.pump_ms, c.boots) = v[n:n + 6]
    n += 6
    c.resets = list(v[n:n + len(RESET_CAUSES)])
    n += len(RESET_CAUSES)
    (c.last_reset, c.filters, c.filter_ml, c.filter_pump_ms, c.filter_brews,
     c.filter_fit_wall, c.filter_powered_s) = v[n:n + 7]
    if fmt == 3:
        (c.day, c.day_brews, c.prev_day, c.prev_brews, c.undated_boot,
         c.undated_brews) = v[n + 7:]
    if fmt >= 2:
        c.pump_ms *= 10
        c.filter_pump_ms *= 10
    else:  # v1 kept 32-bit counts where v2 keeps 16 bits: saturate, as Meter.boot does
        c.stuck_runs = min(c.stuck_runs, 0xFFFF)
        for i in range(len(c.resets)):  # (not a comprehension: code held on the heap)
            c.resets[i] = min(c.resets[i], 0xFFFF)
    return c
