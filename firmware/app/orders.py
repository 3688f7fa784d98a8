# Order decisions within the owner's rules, and the order's status as the cloud reports it.
# Pure: the supplies, settings, forecast and wall time are arguments.
#
# At most one order per consumable and depletion cycle: the order id is "<item>-<cycle>", so
# a retry, a duplicated report or a reboot that sends the request again can never make a
# second order (the cloud dedupes on the id). The rules (auto-order per consumable, a monthly
# cap, ask-first) are checked here, on the device, so they hold offline too.
from app.protocol import MAX_NAME, OPEN, STATUSES, UNKNOWN, order_id, setting
from app.supplies import ITEMS


def month_of(wall):
    """The calendar month (UTC) of unix time `wall`, as year * 12 + month - 1."""
    z = wall // 86400 + 719468  # days since 0000-03-01 (H. Hinnant's civil_from_days)
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    m = mp + 3 if mp < 10 else mp - 9
    return (yoe + era * 400 + (1 if m <= 2 else 0)) * 12 + m - 1


def decide(sup, cfg, profile, wall, per_day):
    """The order requests (outbox events) the rules allow now; `sup` records them."""
    if not wall or per_day is None:
        return []  # no clock or no recent use: no forecast, no order
    month = month_of(wall)
    if sup.month[0] != month:
        sup.month = [month, 0]
    lead = setting(cfg, "lead_days")
    out = []
    for name in ITEMS:
        it = sup.items[name]
        if it[2]:
            continue  # this cycle has its order
        used, cap, days = sup.level(name, cfg, profile, wall, per_day)
        # (The owner's auto_ rule read last: the rest runs after every brew.)
        if days is None or days >= lead or not setting(cfg, "auto_" + name):
            continue  # not running out, or the owner orders this one by hand
        if sup.month[1] >= setting(cfg, "orders_month"):
            continue  # the monthly cap: it waits for next month (or a refill by hand)
        sup.month[1] += 1
        it[2] = "requested"
        out.append(request(sup, name, cfg, profile, wall, per_day))
    return out


def request(sup, name, cfg, profile, wall, per_day):
    """The outbox event that asks the cloud for this cycle's order of `name`."""
    it = sup.items[name]
    used, cap, days = sup.level(name, cfg, profile, wall, per_day)
    ev = {"kind": "order_requested", "order": order_id(name, it[0]), "item": name,
          "cycle": it[0], "ask": setting(cfg, "ask_first"),
          "pct": sup.pct(name, used, cap, profile, wall), "wall": wall}
    if days is not None:
        ev["days"] = int(days)
    return ev


def open_orders(sup):
    """The report's `orders`: {order id: status} of this cycle's orders still open."""
    out = {}  # (a loop, not a comprehension: that is code held on the heap)
    for n, it in sup.items.items():
        if it[2] in OPEN:
            out[order_id(n, it[0])] = it[2]
    return out


def apply_status(sup, statuses):
    """The cloud's `orders` reply ({order id: status}). Returns (changed, names whose
    order the cloud has never received: to request again). A status the protocol does not
    know is kept, ending the cycle's ordering (sync.actions says it in a fault)."""
    changed = False
    lost = []
    for name, it in sup.items.items():
        oid = order_id(name, it[0])
        st = statuses.get(oid)
        if st == UNKNOWN and it[2] in OPEN:
            lost.append(name)
        elif st in STATUSES and st != it[2] and it[2]:
            it[2] = st
            changed = True
        elif st and st != UNKNOWN and st not in STATUSES and it[2] in OPEN:
            it[2] = st[:MAX_NAME]
            changed = True
    return changed, lost
