# Where a brew is counted. Pure logic: the shell passes every input level and flow pulse in,
# with the ticks_ms time it was seen; nothing here reads a pin or a clock.
from time import ticks_diff

from micropython import const

from app.counters import Counters

# What a call reports back, so the shell knows when to persist (a brew is durable before it
# is shown or sent anywhere).
NOTHING = const(0)
BREW = const(1)
RINSE = const(2)
STUCK = const(3)  # a run passed max_run_s: raised once, while it is still running
IGNORED = const(4)  # the end of a run that was already on at power-on, or was stuck


class Input:
    """One pump-sense input, debounced: a level counts once it has held for debounce_ms,
    and the change is dated from when it started, so a run's length is not skewed."""

    def __init__(self, debounce_ms):
        self.debounce_ms = debounce_ms
        self.raw = -1  # -1: not sampled since boot
        self.raw_t = 0
        self.on = 0  # debounced level
        self.start = 0  # when the current run started (valid while on)
        self.accrued_ms = 0  # of the current run, already added to the pump counters
        self.held = False  # on at power-on: its start is unknown, so it is never a brew
        self.stuck = False

    def sample(self, level, now):
        """Feed a raw level. Returns the time of a debounced change, or None."""
        level = 1 if level else 0
        if self.raw < 0:  # first sample after boot: take it as it is
            self.raw = self.on = level
            self.raw_t = self.start = now
            self.held = bool(level)
            return None
        if level != self.raw:
            self.raw = level
            self.raw_t = now
        if self.raw != self.on and ticks_diff(now, self.raw_t) >= self.debounce_ms:
            self.on = self.raw
            return self.raw_t
        return None

    def run_ms(self, now):
        # A pending (not yet debounced) release ends the run where it began.
        end = self.raw_t if self.raw == 0 else now
        d = ticks_diff(end, self.start)
        return d if d > 0 else 0


class Meter:
    """Counts brews, rinses, water and pump time from sensor inputs into a Counters."""

    def __init__(self, profile, counters=None):
        self.profile = profile
        self.c = counters if counters is not None else Counters()
        self.inputs = []  # (a loop, not a comprehension: that is code held on the heap)
        for _ in profile.kinds:
            self.inputs.append(Input(profile.debounce_ms))
        self._min_ms = int(profile.min_brew_s * 1000)
        self._max_ms = int(profile.max_run_s * 1000)
        self._ppl = profile.pulses_per_litre
        self._milli_rem = 0  # pulses*1000 not yet a whole ml: sub-ml remainder, RAM only
        self.last_kind = -1  # input index of the last completed brew
        self.last_run_ms = 0

    def boot(self, cause):
        """Count a boot and its reset cause (machine.reset_cause())."""
        c = self.c
        c.boots += 1
        if not 0 <= cause < len(c.resets):
            cause = 0
        if c.resets[cause] < 0xFFFF:  # stored in 16 bits: saturate, never wrap
            c.resets[cause] += 1
        c.last_reset = cause

    def sample(self, i, level, now):
        """Feed input i's raw level at ticks_ms `now`. Returns BREW, RINSE, IGNORED or
        NOTHING."""
        inp = self.inputs[i]
        t = inp.sample(level, now)
        if t is None:
            return NOTHING
        if inp.on:
            inp.start = t
            inp.accrued_ms = 0
            inp.held = inp.stuck = False
            return NOTHING
        return self._end_run(i, inp, ticks_diff(t, inp.start))

    def _end_run(self, i, inp, run_ms):
        self._accrue(inp, run_ms)
        if inp.held or inp.stuck:
            inp.held = inp.stuck = False
            return IGNORED
        self.last_run_ms = run_ms
        c = self.c
        if run_ms < self._min_ms:
            c.rinses += 1
            return RINSE
        c.brews[i] += 1
        c.filter_brews += 1
        self.last_kind = i
        return BREW

    def _accrue(self, inp, run_ms):
        # Pump time is added as a run goes (so periodic flushes hold it) and topped up at its
        # end; accrued_ms makes every millisecond land exactly once.
        d = run_ms - inp.accrued_ms
        if d > 0:
            self.c.pump_ms += d
            self.c.filter_pump_ms += d
            inp.accrued_ms = run_ms

    def poll(self, now):
        """Accrue pump time of running inputs and watch for stuck ones. Returns STUCK the
        first time a run passes max_run_s, else NOTHING."""
        ret = NOTHING
        for inp in self.inputs:
            if inp.on:
                ms = inp.run_ms(now)
                self._accrue(inp, ms)
                if ms > self._max_ms and not inp.stuck:
                    inp.stuck = True
                    self.c.stuck_runs += 1
                    ret = STUCK
        return ret

    def pumping(self):
        for inp in self.inputs:
            if inp.on:
                return True
        return False

    def pulses(self, n):
        """Add n flow-meter pulses (counted by hardware since the last call)."""
        if n <= 0:
            return
        milli = self._milli_rem + n * 1000
        ml = milli // self._ppl
        self._milli_rem = milli - ml * self._ppl
        if ml:
            c = self.c
            c.water_ml += ml
            c.filter_ml += ml
            if not self.pumping():
                c.idle_ml += ml

    def powered(self, seconds):
        """Add powered-on time (the shell calls it with whole seconds of uptime)."""
        self.c.filter_powered_s += seconds
