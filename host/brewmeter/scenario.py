"""The scripted sensor driver: build a timeline of what the machine's sensors do ("brew an
espresso of 40 ml", "rinse 1 s", "bounce the contact for 30 ms") together with its ground
truth, then play it into a target: the counting core here, or the emulated board."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from brewmeter.onmicropython import replay

if TYPE_CHECKING:  # the firmware: imported where used (see profiles.py)
    from app.profile import Profile

# Flow pulses arrive in chunks this far apart while water runs (what the sensor task would
# read from the hardware counter; finer only costs simulation time).
PULSE_CHUNK_MS = 2000


@dataclass
class Truth:
    """What the script did, for tests to compare the counters with."""

    pulses_per_litre: float
    brews: Counter[str] = field(default_factory=Counter)
    rinses: int = 0
    stuck_runs: int = 0
    pulses: int = 0
    pump_ms: int = 0

    @property
    def water_ml(self) -> int:
        """Whole millilitres in the pulses sent, as the flow meter measured them."""
        return int(self.pulses * 1000 // self.pulses_per_litre)

    @property
    def total_brews(self) -> int:
        return sum(self.brews.values())


class Script:
    """A timeline of sensor events, built in order. Times are ms since the script start."""

    def __init__(self, profile: Profile, start_ms: int = 0, held: tuple[str, ...] = (),
                 pulse_chunk_ms: int = PULSE_CHUNK_MS) -> None:
        """The script starts at power-on: every input is off, except those `held` on.
        `pulse_chunk_ms`: how far apart flow pulses arrive while water runs."""
        self.profile = profile
        self.pulse_chunk_ms = pulse_chunk_ms
        self.t = start_ms
        self.events: list[tuple[int, int, int, int]] = []
        self.truth = Truth(profile.pulses_per_litre)
        self._milli_rem = 0
        for i, kind in enumerate(profile.kinds):
            self._emit(replay.LEVEL, i, 1 if kind in held else 0)
        self.wait(replay.POLL_MS)

    def _index(self, kind: str) -> int:
        try:
            return self.profile.kinds.index(kind)
        except ValueError:
            raise ValueError(f"{self.profile.source}: no input named {kind!r}") from None

    def _emit(self, op: int, a: int, b: int = 0, at: int | None = None) -> None:
        self.events.append((self.t if at is None else at, op, a, b))

    def wait(self, ms: int) -> Script:
        self.t += int(ms)
        return self

    def flow(self, ml: float, over_ms: int) -> None:
        """Water through the meter, spread over the next `over_ms` (time does not advance)."""
        ppl = self.profile.pulses_per_litre
        milli = self._milli_rem + round(ml * ppl)  # pulses * 1000, as the core keeps them
        pulses, self._milli_rem = divmod(milli, 1000)
        self.truth.pulses += pulses
        chunks = max(1, over_ms // self.pulse_chunk_ms)
        for k in range(chunks):
            n = pulses * (k + 1) // chunks - pulses * k // chunks
            if n:
                self._emit(replay.PULSES, n, at=self.t + (k + 1) * over_ms // chunks)

    def run(self, kind: str, seconds: float, ml: float = 0.0) -> Script:
        """The pump input `kind` on for `seconds`, with `ml` of water flowing."""
        i = self._index(kind)
        ms = int(seconds * 1000)
        self._emit(replay.LEVEL, i, 1)
        if ml:
            self.flow(ml, ms)
        self.t += ms
        self._emit(replay.LEVEL, i, 0)
        self.truth.pump_ms += ms
        if ms > self.profile.max_run_s * 1000:
            self.truth.stuck_runs += 1
        elif ms >= self.profile.min_brew_s * 1000:
            self.truth.brews[kind] += 1
        else:
            self.truth.rinses += 1
        # Let the release debounce before anything else happens to this input.
        return self.wait(self.profile.debounce_ms + 10)

    def brew(self, kind: str, ml: float, seconds: float = 25) -> Script:
        if seconds < self.profile.min_brew_s:
            raise ValueError(f"a {seconds} s run is a rinse, not a brew")
        return self.run(kind, seconds, ml)

    def rinse(self, seconds: float = 1, kind: str | None = None, ml: float = 0) -> Script:
        return self.run(kind or self.profile.kinds[0], seconds, ml)

    def level(self, kind: str, level: int, after_ms: int = 0) -> Script:
        """The raw level of input `kind`, `after_ms` from now (time does not advance): for
        edges no other step makes, such as chatter of a chosen shape."""
        self._emit(replay.LEVEL, self._index(kind), level, at=self.t + after_ms)
        return self

    def bounce(self, kind: str, ms: int = 30, edges: int = 6) -> Script:
        """Contact bounce: `edges` toggles within `ms` that end at the level they began, so
        nothing is counted (valid only while `ms` is under the profile's debounce)."""
        i = self._index(kind)
        for k in range(edges):
            self._emit(replay.LEVEL, i, 1 - k % 2, at=self.t + k * ms // edges)
        self._emit(replay.LEVEL, i, 0, at=self.t + ms)
        return self.wait(ms + self.profile.debounce_ms + 10)

    def idle_flow(self, ml: float, seconds: float = 5) -> Script:
        """Water through the meter with no pump input on."""
        self.flow(ml, int(seconds * 1000))
        return self.wait(seconds * 1000)

    def powered(self, seconds: int) -> Script:
        self._emit(replay.POWERED, seconds)
        return self

    def filter_change(self, wall: int = 0) -> Script:
        self._emit(replay.FILTER, 0, wall)
        return self.wait(10)

    def date_corrects(self, error_s: int) -> Script:
        """The cloud's Date corrects the device's wall clock, `error_s` seconds off until
        now (NTP answered wrong)."""
        self._emit(replay.CLOCK, error_s)
        return self

    def reboot(self) -> Script:
        """The machine switched off and on again (a clean power cycle, no cut)."""
        self._emit(replay.REBOOT, 0)
        return self

    def random_step(self, rng: random.Random, max_wait_ms: int = 3_600_000) -> Script:
        """One random thing the machine's sensors might do, then a random pause: mostly
        brews, some rinses, bounce, idle flow, powered time and filter changes."""
        p = self.profile
        kind = rng.choice(p.kinds)
        r = rng.random()
        if r < 0.6:
            self.brew(kind, rng.uniform(20, 250), rng.uniform(p.min_brew_s, 60))
        elif r < 0.75:
            self.rinse(rng.uniform(0.2, p.min_brew_s - 0.1), kind, rng.uniform(0, 30))
        elif r < 0.85:
            self.bounce(kind, rng.randrange(1, p.debounce_ms))
        elif r < 0.9:
            self.idle_flow(rng.uniform(1, 50))
        elif r < 0.95:
            self.powered(rng.randrange(1, 86400))
        else:
            self.filter_change(rng.choice((0, 1_800_000_000)))
        return self.wait(rng.randrange(0, max_wait_ms))

    def settle(self) -> Script:
        """A last event after everything so pending changes are seen."""
        self.wait(1000)
        self._emit(replay.POWERED, 0)
        return self

    def jsonl(self) -> str:
        return "".join(f"[{t},{op},{a},{b}]\n" for t, op, a, b in sorted(self.events))


def play(meter, events) -> None:  # noqa: ANN001 - firmware objects carry no type hints
    """Play a timeline into a counting core (app.meter.Meter) in the harness."""
    step = replay.step
    for t, op, a, b in sorted(events):
        step(meter, t, op, a, b)


def play_board(control, profile: Profile, events) -> None:  # noqa: ANN001 - BoardControl
    """Play a timeline on the emulated board, in real time, through its control address:
    input levels as presses and releases, flow as pulses. (Powered time and filter changes
    are the board's own business there: a real clock runs, a tech changes filters.)"""
    import time

    t0 = time.monotonic()
    start = min(e[0] for e in events)
    for t, op, a, b in sorted(events):
        delay = (t - start) / 1000 - (time.monotonic() - t0)
        if delay > 0:
            time.sleep(delay)
        if op == replay.LEVEL and b:
            control.press(profile.kinds[a])
        elif op == replay.LEVEL:
            control.release(profile.kinds[a])
        elif op == replay.PULSES:
            control.pulses(a)
