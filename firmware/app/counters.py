# The counters: everything the machine has consumed, as plain integers.
# Lifetime counters only grow. The filter_* ones cover the current filter cycle and restart
# only on an explicit filter change (see filters.py), which records the values it closed.
MAX_INPUTS = 4  # pump-sense inputs a board profile may have

# machine.reset_cause() values on the ESP32 port (PWRON, HARD, WDT, DEEPSLEEP, SOFT).
RESET_CAUSES = ("unknown", "power_on", "hard", "watchdog", "deepsleep", "soft")


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
        self.day_acked = 0  # of day_brews, what the cloud has stored
        self.prev_acked = 0  # likewise of prev_brews

    def total_brews(self):
        return sum(self.brews)
