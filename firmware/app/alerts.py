# Service alerts that are not orders: the filter or the descaling overdue, and a brew that
# pumps much longer than usual for its kind (a clogging filter, a failing pump). Raised as
# fault events (app.device) and listed by the console's `faults`. Pure.
from micropython import const

from app import waterfilter
from app.protocol import setting
from app.supplies import MONTH_S, filter_capacity_ml

_OVER_PCT = const(110)  # used past its capacity by this much: the service is overdue ...
_GRACE_S = const(604800)  # ... as is a filter a week past its age
_LEARN = const(5)  # brews of a kind before its usual time is trusted
_SLOW = const(16)  # the usual time then follows 1/16 of each normal brew: a slow drift


def overdue(sup, cfg, profile, wall):
    """[(code, detail)] of service now overdue, each raised once per cycle. (Merely due
    shows on the console; the alert is for what is left undone well past that.)"""
    out = []
    c = sup.c
    dh = setting(cfg, "water_hardness_dh")  # (read once: checked after every brew)
    it = sup.items["filter"]
    why = None
    if c.filter_ml * 100 >= filter_capacity_ml(profile, dh) * _OVER_PCT:
        why = "litres"
    elif waterfilter.age_s(c, wall) >= profile.filter_months * MONTH_S + _GRACE_S:
        why = "age"
    if why and not it[3]:
        it[3] = 1
        out.append(("filter_overdue", why))
    it = sup.items["descaler"]
    ml = c.water_ml - it[1]  # Supplies.level's descaler use: ml x dH against descale_ldh
    if ml * dh * 100 >= setting(cfg, "descale_ldh") * 1000 * _OVER_PCT and not it[3]:
        it[3] = 1
        out.append(("descale_overdue", "%d L since the last descale" % (ml // 1000)))
    return out


class BrewTimes:
    """The usual pump time of each brew kind, learnt from its brews."""

    def __init__(self, n, saved=None):
        self.usual = [0] * n  # ms
        self.count = [0] * n
        if saved and len(saved) == 2 and len(saved[0]) == len(saved[1]) == n:
            self.usual, self.count = saved

    def state(self):
        return [self.usual, self.count]

    def brew(self, i, ms, pct):
        """A brew of kind i took `ms`. The usual time if this one took over `pct` % of it
        (it is then left out of the learning), else None."""
        n, usual = self.count[i], self.usual[i]
        if n >= _LEARN and ms * 100 > usual * pct:
            return usual
        if n < _LEARN:
            self.count[i] = n + 1
            self.usual[i] = (usual * n + ms) // (n + 1)
        else:
            self.usual[i] = usual + (ms - usual) // _SLOW
        return None
