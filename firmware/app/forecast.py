# Recent use per day, to forecast when each consumable runs out. Pure: the day (UTC days
# since 1970) and the counters' totals are arguments.
#
# What is tracked are the drivers of every consumable: brews of each kind, and water (ml).
# At each new day the use since the last one updates a per-day rate: the plain average over
# the first WINDOW days, then an exponential average over about WINDOW days, so a busy office
# machine and a weekend one each get their own pace, and a change of pace shows within days.
from micropython import const

WINDOW = const(7)
IDLE_DAYS = const(7)  # unused this long: no forecast (and no order) until used again
_MAX_GAP = const(60)  # a longer gap (days off) counts as this many days


class Forecast:
    def __init__(self, n_drivers, saved=None):
        """`saved` is what state() returned before a reboot (None: nothing known yet)."""
        self.day = 0  # the day the rates are up to (0: none yet)
        self.days = 0  # days observed, for the plain average while under WINDOW
        self.used = 0  # the last day with any use
        self.at = None  # the drivers' totals at the start of `day`
        self.rates = [0.0] * n_drivers
        if saved:
            try:
                day, days, used, at, rates = saved
                if len(at) == len(rates) == n_drivers:
                    self.day, self.days, self.used, self.at, self.rates = (
                        day, days, used, at, rates)
            except (TypeError, ValueError):
                pass  # unreadable: learn again

    def state(self):
        rates = []  # (loops, not comprehensions: each of those is code held on the heap)
        for r in self.rates:
            rates.append(round(r, 3))
        return [self.day, self.days, self.used, self.at, rates]

    def roll(self, day, totals):
        """The day is now `day` and the drivers' totals are `totals` (a list): fold the use
        since the last roll into the rates. True if anything changed (worth saving)."""
        if self.at is None or day < self.day or len(totals) != len(self.at):
            self.day, self.at = day, list(totals)  # first day seen, or a clock set back
            return True
        gap = day - self.day
        if gap <= 0:
            return False
        use = []
        for t, a in zip(totals, self.at):
            use.append(t - a)
        if min(use) < 0:  # counters went back (flash restored from older): start over here
            self.day, self.at = day, list(totals)
            return True
        if max(use) == 0:
            return False  # an idle day: folded in with the next day of use, no write now
        self.used = day - 1
        gap = min(gap, _MAX_GAP)
        rates = self.rates
        for _ in range(gap):  # spread over the days it took
            self.days += 1
            w = 1 / min(self.days, WINDOW)
            for i in range(len(rates)):
                rates[i] += (use[i] / gap - rates[i]) * w
        self.day, self.at = day, list(totals)
        return True

    def per_day(self, day):
        """The drivers' use per day, or None when there is no forecast: nothing learnt yet,
        or unused for IDLE_DAYS."""
        if not self.days or day - self.used > IDLE_DAYS:
            return None
        return self.rates
