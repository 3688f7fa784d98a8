# Brews by the day they happened, so the maker bills usage to its day even after days
# offline. Pure: wall time (unix seconds, 0 while unknown) and the boot number are arguments.
#
# Today's and yesterday's counts live in the Counters, saved in the same write as each brew,
# so midnight costs no extra flash write. While the clock is unknown, brews go to this boot's
# undated bucket; the cloud dates it once a report from the same boot carries the time (the
# two never overlap: docs/protocol.yaml). Buckets older than yesterday, or undated ones of
# earlier boots, that the cloud has not acknowledged wait in `history`, which app.device
# saves: only a device offline past a midnight pays that write.
#
# A device offline longer than its history can hold keeps the first KEEP days apart and
# folds the later ones into one folded bucket (app/protocol.py), which the cloud places on
# the newest day in it, estimated: no brew is dropped. A backward clock step of more than
# protocol.DAY_AHEAD days to a day the cloud has not seen the device on yet (the earlier
# clock was wrong: far ahead, and the cloud did not bill those days) folds the buckets
# dated after the new day likewise, placed on it. Other steps back (a small one, or to a day
# before one the cloud confirmed: the new clock is the wrong one) keep counting on the
# current day until the clock passes it.
from micropython import const

from app.protocol import DAY_AHEAD, MAX_DAYS

KEEP = const(64)  # buckets kept while offline, besides the folded one: over two months


class Days:
    def __init__(self, c, boot, history=None, confirmed=0):
        self.c = c
        self.boot = boot
        # Not yet acknowledged: [day, brews], [-boot, brews] (undated), and first, if any,
        # the folded bucket [0, brews, fold id, newest day in it (0: none)].
        self.history = history or []
        # The latest day the cloud's clock (its reply's Date) agreed with ours: a day the
        # cloud bills. (Saved with the history: it changes at most daily.)
        self.confirmed = confirmed or 0
        self.unsaved = False  # history changed: app.device saves it with the state file
        self.sent = ()  # keys of the history buckets in the report last built: folded last
        self.more = False  # that report left buckets out (paged): send the next one now
        self._folds = 0  # folded buckets opened this boot (their id: boot * 256 + n)
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
        elif c.day - day > DAY_AHEAD and day >= self.confirmed:
            self._back(day)

    def _back(self, day):
        # The clock stepped back to `day`: what was counted on later days was counted under
        # a wrong clock, before now, and the cloud did not bill it on those days (ahead of
        # its clock; none of them confirmed): folded, placed on `day`.
        c = self.c
        for h in self.history[:]:
            if h[0] > day:
                self.history.remove(h)
                self._fold(h[1], day, True)
        if c.prev_day > day:
            self._fold(c.prev_brews, day, True)
            c.prev_day = c.prev_brews = 0
        self._fold(c.day_brews, day, True)
        n = 0
        if c.prev_day == day:  # count on in it
            n, c.prev_day, c.prev_brews = c.prev_brews, 0, 0
        else:
            for h in self.history:
                if h[0] == day:
                    self.history.remove(h)
                    n = h[1]
                    break
        c.day, c.day_brews = day, n
        self.unsaved = True

    def _fold(self, brews, day, back=False):
        # Add a bucket's brews to the folded bucket (history[0]), opening one if none is;
        # `day`: the bucket's (0 undated), or after a step back the day it is placed on.
        if not brews:
            return
        h = self.history
        if not (h and h[0][0] == 0):
            h.insert(0, [0, 0, self.boot * 256 + self._folds, 0])
            self._folds += 1
        f = h[0]
        f[1] += brews
        f[3] = day if back else max(f[3], day)
        self.unsaved = True

    def _keep(self, key, brews):
        if key and brews:
            h = self.history
            for x in h:  # a power cut after a midnight (history saved, counters not)
                if x[0] == key:  # brings yesterday back: one bucket still
                    x[1] = max(x[1], brews)
                    self.unsaved = True
                    return
            h.append([key, brews])
            while len(h) - (h[0][0] == 0) > KEEP:
                # Fold the newest not in the last report: the oldest were the days around
                # the last contact, which the cloud may hold (in part): folding one of
                # those would count its brews twice.
                i = len(h) - 1
                while i > 1 and h[i][0] in self.sent:
                    i -= 1
                old = h.pop(i)
                self._fold(old[1], max(old[0], 0))
            self.unsaved = True

    def confirm(self, day):
        """The cloud's clock agreed with ours on `day`."""
        if day > self.confirmed:
            self.confirmed = day
            self.unsaved = True

    def buckets(self):
        """The report's `days`: at most protocol.MAX_DAYS, the oldest first (`more` says
        whether some were left for the next report)."""
        c = self.c
        out = []  # (loops, not comprehensions: each of those is code held on the heap)
        self.sent = []
        for h in self.history[:MAX_DAYS]:
            out.append(_bucket(h))
            self.sent.append(h[0])
        for key, n in ((c.prev_day, c.prev_brews), (c.day, c.day_brews),
                       (-c.undated_boot, c.undated_brews)):
            if key and n:
                out.append(_bucket([key, n]))
        self.more = len(out) > MAX_DAYS
        return out[:MAX_DAYS]

    def acked(self, sent):
        """The cloud stored `sent` (what buckets() gave): finished buckets can go."""
        done = []
        for b in sent:
            done.append(_key(b))
        c = self.c
        if [c.prev_day, c.prev_brews] in done:
            c.prev_day = c.prev_brews = 0  # saved with the next counters write
        n = len(self.history)
        keep = []
        for h in self.history:
            if h not in done:
                keep.append(h)
        self.history = keep
        self.unsaved = self.unsaved or len(self.history) != n


def _key(b):
    # A bucket as history keeps it
    if "fold" in b:
        return [0, b["brews_total"], b["fold"], b["last"]]
    return [b["day"] if "day" in b else -b["boot"], b["brews_total"]]


def _bucket(h):
    key, brews = h[0], h[1]
    if key > 0:
        return {"day": key, "brews_total": brews}
    if key < 0:
        return {"boot": -key, "at_ms": 0, "brews_total": brews}
    return {"fold": h[2], "last": h[3], "brews_total": brews}
