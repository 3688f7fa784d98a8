# The settings the owner and the maker may change (remote configuration from the cloud, or
# `config set` on the service console): names, ranges and defaults. Pure.

# name: (minimum, maximum, default); all are integers
SCHEMA = {
    # Billing is by day and orders raise their own report, so usage can wait: two hours of
    # coalescing keeps a typical day to a few small reports (wire_bytes_per_day).
    "sync_interval_s": (300, 86400, 86400),  # report at least this often, even with no usage
    "report_delay_s": (5, 14400, 7200),  # after usage, wait this long to batch more into one
    "backoff_max_s": (60, 86400, 3600),  # the longest wait between failed attempts
    # Consumables (app/supplies.py). Coffee comes in packs of coffee_pack units (pods, or
    # grams of beans); a brew of each kind uses coffee_use.KIND units.
    "coffee_pack": (1, 100000, 100),
    "water_hardness_dh": (1, 40, 10),  # German degrees; the filter and descaling follow it
    "descale_ldh": (100, 100000, 1500),  # litres x degrees between descales (150 L at 10)
    "tablets_pack": (1, 1000, 10),  # cleaning tablets per pack ...
    "clean_brews": (10, 10000, 200),  # ... one every this many brews
    # Orders (app/orders.py): the owner's rules, kept by the device even offline.
    "lead_days": (1, 60, 5),  # order when the forecast says it runs out sooner than this
    "auto_coffee": (0, 1, 1),  # auto-order, per consumable
    "auto_filter": (0, 1, 1),
    "auto_descaler": (0, 1, 1),
    "auto_tablets": (0, 1, 1),
    "ask_first": (0, 1, 0),  # 1: every order waits for the owner's approval in the cloud
    "orders_month": (0, 100, 6),  # at most this many orders per calendar month (UTC)
    "long_brew_pct": (120, 1000, 200),  # a brew this % of its kind's usual time is a fault
}
# Settings that hold a number per brew kind, as {"kind": n}: (minimum, maximum).
PER_KIND = {"coffee_use": (0, 1000)}


def get(settings, name):
    v = settings.get(name)
    return SCHEMA[name][2] if v is None else v


def _int_in(v, lo, hi):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def check(settings, kinds=None):
    """None if `settings` (a dict) is acceptable, else the reason it is not. `kinds`: the
    board's brew kinds, which per-kind settings may name."""
    if not isinstance(settings, dict):
        return "settings must be an object"
    for k, v in settings.items():
        if k in PER_KIND:
            lo, hi = PER_KIND[k]
            if not isinstance(v, dict):
                return "%s must be an object of kind: number" % k
            for kind, n in v.items():
                if kinds is not None and kind not in kinds:
                    return "%s: no brew kind %r" % (k, kind)
                if not _int_in(n, lo, hi):
                    return "%s.%s must be an integer in %d..%d, got %r" % (k, kind, lo, hi, n)
            continue
        if k not in SCHEMA:
            return "unknown setting %r" % (k,)
        lo, hi, _ = SCHEMA[k]
        if not _int_in(v, lo, hi):
            return "%s must be an integer in %d..%d, got %r" % (k, lo, hi, v)
    return None
