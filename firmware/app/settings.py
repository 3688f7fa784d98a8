# The settings the owner and the maker may change (remote configuration from the cloud, or
# `config set` on the service console): names, ranges and defaults. Pure.

# name: (minimum, maximum, default); all are integers
SCHEMA = {
    # Billing is by day and orders raise their own report, so usage can wait: two hours of
    # coalescing keeps a typical day to a few small reports (wire_bytes_per_day).
    "sync_interval_s": (300, 86400, 86400),  # report at least this often, even with no usage
    "report_delay_s": (5, 14400, 7200),  # after usage, wait this long to batch more into one
    "backoff_max_s": (60, 86400, 3600),  # the longest wait between failed attempts
}


def get(settings, name):
    v = settings.get(name)
    return SCHEMA[name][2] if v is None else v


def check(settings):
    """None if `settings` (a dict) is acceptable, else the reason it is not."""
    if not isinstance(settings, dict):
        return "settings must be an object"
    for k, v in settings.items():
        if k not in SCHEMA:
            return "unknown setting %r" % (k,)
        lo, hi, _ = SCHEMA[k]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return "%s must be an integer in %d..%d, got %r" % (k, lo, hi, v)
    return None
