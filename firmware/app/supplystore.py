# How the consumables' state is kept on flash: cycles, marks and orders (app/supplies.py),
# the forecast's rates (app/forecast.py) and the usual brew times (app/alerts.py), packed in
# one binary record of at most 126 bytes (4 brew kinds), so that its file stays inline in
# littlefs metadata: a rewrite costs about 100 bytes of flash, not a block erase (the
# README's "Storage"). Written after a day of use, an order, a refill or a status change.
import struct

from app.protocol import OTHER, STATUSES
from app.supplies import ERA_BITS, ITEMS


def _fmt(n):
    # per item: cycle in its era, order status (0 none, else STATUSES index + 1, 255 another
    # word: it reads back as OTHER), overdue alert raised;
    # marks: coffee per kind, descaler, tablets; month, orders in it; forecast: day, days,
    # last day of use, totals at the day's start, rates; usual brew ms and count per kind;
    # the cycles' era (last: a record written before it had none, and reads as era 0).
    return "<%s%dIIBIHI%dI%df%dI%dBI" % ("HBB" * len(ITEMS), n + 2, n + 1, n + 1, n, n)


def pack(sup, fc, bt):
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
    vals += bt.usual + [min(x, 255) for x in bt.count]
    vals.append(it["coffee"][0] >> ERA_BITS)
    return struct.pack(_fmt(n), *vals)


def unpack(data, n):
    """(supplies state, forecast state, brew times state) from `data` for `n` brew kinds,
    or None if it is not such a record (another board's, or damaged past its CRC)."""
    fmt = _fmt(n)
    size = struct.calcsize(fmt)
    if data and len(data) == size - 4:  # written before the era
        data += bytes(4)
    if not data or len(data) != size:
        return None
    v = list(struct.unpack(fmt, data))
    era = v.pop() << ERA_BITS
    k = 3 * len(ITEMS)
    marks = v[k:k + n + 2]
    rest = v[k + n + 2:]
    items = {}
    for i, name in enumerate(ITEMS):
        cycle, st, alerted = v[3 * i:3 * i + 3]
        mark = {"coffee": marks[:n], "descaler": marks[n], "tablets": marks[n + 1]}.get(name, 0)
        status = STATUSES[st - 1] if 0 < st <= len(STATUSES) else OTHER if st == 255 else ""
        items[name] = [cycle if name == "filter" else era | cycle, mark, status, alerted]
    month = rest[:2]
    day, days, used = rest[2:5]
    at = rest[5:6 + n]
    rates = rest[6 + n:7 + 2 * n]
    bt = rest[7 + 2 * n:]
    fc = [day, days, used, at if day else None, rates]
    return {"it": items, "mo": month}, fc, [bt[:n], bt[n:]]
