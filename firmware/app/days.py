# Brews by the day they happened, so the maker bills usage to its day even after days
# offline. Pure: wall time (unix seconds, 0 while unknown) and the boot number are arguments.
#
# Today's and yesterday's counts live in the Counters, saved in the same write as each brew,
# so midnight costs no extra flash write. While the clock is unknown, brews go to this boot's
# undated bucket; the cloud dates it once a report from the same boot carries the time (the
# two never overlap: docs/protocol.yaml). Buckets older than yesterday, or undated ones of
# earlier boots, that the cloud has not acknowledged wait in `history`, which app.device
# saves: only a device offline past a midnight pays that write.
from micropython import const

KEEP = const(64)  # buckets kept while offline: over two months of days


class Days:
    def __init__(self, c, boot, history=None):
        self.c = c
        self.boot = boot
        self.history = history or []  # [day, brews] or [-boot, brews] not yet acknowledged
        self.unsaved = False  # history changed: app.device saves it with the state file
        if c.undated_brews and c.undated_boot != boot & 0xFFFF:  # an earlier boot's, unsent
            self._keep(-c.undated_boot, c.undated_brews)
            c.undated_boot = c.undated_brews = 0

    def brew(self, wall):
        c = self.c
        if wall:
            self.roll(wall)
            c.day_brews += 1
        else:
            c.undated_boot = self.boot & 0xFFFF  # kept in 16 bits: boots of its era
            c.undated_brews += 1

    def roll(self, wall):
        """Move to the UTC day of `wall` if it is a new one: today becomes yesterday."""
        c = self.c
        day = wall // 86400
        if day > c.day:
            self._keep(c.prev_day, c.prev_brews)
            c.prev_day, c.prev_brews = (c.day, c.day_brews) if c.day_brews else (0, 0)
            c.day, c.day_brews = day, 0

    def _keep(self, key, brews):
        if key and brews:
            self.history.append([key, brews])
            del self.history[:-KEEP]
            self.unsaved = True

    def buckets(self):
        """The report's `days`."""
        c = self.c
        out = [_bucket(k, n) for k, n in self.history]
        for key, n in ((c.prev_day, c.prev_brews), (c.day, c.day_brews),
                       (-c.undated_boot, c.undated_brews)):
            if key and n:
                out.append(_bucket(key, n))
        return out

    def acked(self, sent):
        """The cloud stored `sent` (what buckets() gave): finished buckets can go."""
        done = [[b["day"] if "day" in b else -b["boot"], b["brews_total"]] for b in sent]
        c = self.c
        if [c.prev_day, c.prev_brews] in done:
            c.prev_day = c.prev_brews = 0  # saved with the next counters write
        n = len(self.history)
        self.history = [h for h in self.history if h not in done]
        self.unsaved = self.unsaved or len(self.history) != n


def _bucket(key, brews):
    if key > 0:
        return {"day": key, "brews_total": brews}
    return {"boot": -key, "at_ms": 0, "brews_total": brews}
