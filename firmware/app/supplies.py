# Consumables: how much is left of each, from the counters, and when it runs out. Pure: the
# counters, settings, forecast and wall time are arguments; app.device persists the state,
# packed here into one binary record (pack_supplies) of at most 126 bytes (4 brew kinds),
# so that its file stays inline in littlefs metadata: a rewrite costs about 100 bytes of
# flash, not a block erase (docs/storage.md). Written after a day of use, an order,
# a refill or a status change.
#
# Each consumable goes through depletion cycles: a cycle starts when it is refilled (a pack
# inserted, a filter fitted, the machine descaled) and its use is the counters' growth since
# then, so no extra flash write is needed per brew. The filter's cycle is the counters' own
# (waterfilter.py); the others keep the counters' totals at the refill as their `mark`.
import struct

from micropython import const

from app import waterfilter
from app.protocol import STATUSES, setting

ITEMS = ("coffee", "filter", "descaler", "tablets")
# A cycle is era << ERA_BITS plus the refills since the era began. The era is 0 from the
# first boot; when this state was lost (or kept for another number of brew kinds) and starts
# afresh, the seq era (app/protocol.py: the boot count plus the floor a 409 set), which only
# grows: so an order id "<item>-<cycle>" is never used twice. After a lost flash (the boot
# count began again) the 409 moves the first era's cycles on (Device.seq_floor). (The
# filter's cycle is the counters' own: it survives.)
ERA_BITS = const(16)
MONTH_S = const(2629746)  # average Gregorian month, as waterfilter.py counts the filter's age
UNITS = {"coffee": "units", "filter": "ml", "descaler": "ml x dH", "tablets": "brews"}


def filter_capacity_ml(profile, dh):
    """The filter's capacity in water of hardness `dh`: profiles rate it at 10 dH."""
    return int(profile.filter_litres * 10000 // dh)


class Supplies:
    def __init__(self, c, kinds, saved=None, floor=0):
        """`c`: the Counters; `kinds`: the brew kinds (profile order); `saved`: what
        startup.unpack_supplies() read back ({"it": items, "mo": month}; None: every cycle
        starts now, in era c.boots + `floor`, the seq floor)."""
        self.c = c
        self.kinds = kinds
        # name -> [cycle, mark, order status ("" none), overdue alert raised this cycle]
        self.items = {}
        self.month = [0, 0]  # [month number, orders requested in it] (app/orders.py)
        saved = saved or {}
        try:
            for name in ITEMS:
                it = saved["it"][name]
                if len(it) != 4 or type(it[0]) is not int:
                    raise ValueError
                self.items[name] = it
            self.month = saved["mo"]
            self.fresh = False
        except (KeyError, TypeError, ValueError):
            era = min(c.boots + floor, 0xFFFFFFFF)  # (stored in 32 bits)
            era = era << ERA_BITS if era > 1 else 0
            for name in ITEMS:
                self.items[name] = [era, self._total(name), "", 0]
            self.fresh = True  # app.device saves these marks at once
        self._sync_filter()

    def _total(self, name):
        # What a cycle's mark records: the counters' totals when it began.
        c = self.c
        if name == "coffee":
            return c.brews[:len(self.kinds)]
        if name == "descaler":
            return c.water_ml
        if name == "tablets":
            return c.total_brews()
        return 0  # filter: the counters restart filter_ml at each change

    def _sync_filter(self):
        # The filter's cycle is counters.filters, saved apart from this state: a power cut
        # between the two writes leaves this one behind, and its order then is a past one.
        it = self.items["filter"]
        if it[0] != self.c.filters:
            self.items["filter"] = [self.c.filters, 0, "", 0]

    def refill(self, name):
        """Start a new cycle of `name` (the filter: after waterfilter.change). Returns the cycle
        that closed."""
        it = self.items[name]
        if name == "filter":
            self._sync_filter()
            return it[0]
        self.items[name] = [it[0] + 1, self._total(name), "", 0]
        return it[0]

    def cycle(self, name):
        self._sync_filter()
        return self.items[name][0]

    def level(self, name, cfg, profile, wall, per_day):
        """(used, capacity, days until it runs out or None) of `name` in its UNITS.
        `per_day` is Forecast.per_day(): the drivers' recent use per day, or None. (Read
        after every brew: each setting read only where it counts.)"""
        self._sync_filter()
        c = self.c
        mark = self.items[name][1]
        kinds = self.kinds
        n = len(kinds)
        if name == "coffee":
            # Coffee units per brew of each kind: coffee_use, else 1 (0 for a kind named for
            # water: hot water uses no coffee).
            u = cfg.get("coffee_use") or {}
            used = rate = 0
            for i in range(n):
                k = kinds[i]
                x = u.get(k, 0 if "water" in k else 1)
                used += (c.brews[i] - mark[i]) * x
                if per_day:
                    rate += per_day[i] * x
            cap = setting(cfg, "coffee_pack")
        elif name == "filter":
            used = c.filter_ml
            cap = filter_capacity_ml(profile, setting(cfg, "water_hardness_dh"))
            rate = per_day[n] if per_day else 0
        elif name == "descaler":
            dh = setting(cfg, "water_hardness_dh")
            used = (c.water_ml - mark) * dh
            cap = setting(cfg, "descale_ldh") * 1000
            rate = per_day[n] * dh if per_day else 0
        else:
            used = c.total_brews() - mark
            cap = setting(cfg, "tablets_pack") * setting(cfg, "clean_brews")
            rate = sum(per_day[:n]) if per_day else 0
        days = None
        if rate > 0:
            days = max(0, cap - used) / rate
            if name == "filter":  # due at whichever comes first: litres or age
                age_left = profile.filter_months * MONTH_S - waterfilter.age_s(c, wall)
                days = min(days, max(0, age_left) / 86400)
        return used, cap, days

    def pct(self, name, used, cap, profile, wall):
        """Percent left (0-100); the filter's is the lower of litres and age."""
        p = 100 - 100 * used // cap if cap else 0
        if name == "filter":
            p = min(p, 100 - 100 * waterfilter.age_s(self.c, wall) // (
                profile.filter_months * MONTH_S))
        return max(0, min(100, p))

    def report(self, cfg, profile, wall, per_day):
        """Every consumable as a report's `supplies`: {name: {cycle, pct, days (whole; None
        without a forecast)}}. (Reports send only the fields that changed.)"""
        out = {}
        for name in ITEMS:
            used, cap, days = self.level(name, cfg, profile, wall, per_day)
            out[name] = {"cycle": self.items[name][0],
                         "pct": self.pct(name, used, cap, profile, wall),
                         "days": None if days is None else int(days)}
        return out


def _fmt(n):
    # per item: cycle in its era, order status (0 none, else STATUSES index + 1, 255 another
    # word: it reads back as OTHER), overdue alert raised;
    # marks: coffee per kind, descaler, tablets; month, orders in it; forecast: day, days,
    # last day of use, totals at the day's start, rates; usual brew ms and count per kind;
    # the cycles' era (last: a record written before it had none, and reads as era 0).
    return "<%s%dIIBIHI%dI%df%dI%dBI" % ("HBB" * len(ITEMS), n + 2, n + 1, n + 1, n, n)


def pack_supplies(sup, fc, bt):
    vals = []
    for name in ITEMS:
        it = sup.items[name]
        st = it[2]
        vals += [it[0] & 0xFFFF,
                 0 if not st else STATUSES.index(st) + 1 if st in STATUSES else 255, it[3]]
    it = sup.items
    vals += it["coffee"][1] + [it["descaler"][1], it["tablets"][1]]
    vals += sup.month
    day, days, used, at, rates = fc.state()
    n = len(rates) - 1
    vals += [day, min(days, 0xFFFF), used] + (at or [0] * (n + 1)) + rates
    vals += bt.usual
    for x in bt.count:
        vals.append(min(x, 255))
    vals.append(it["coffee"][0] >> ERA_BITS)
    return struct.pack(_fmt(n), *vals)
