# The service console's read commands (app/console.py): what each reads of the device, and
# its words for a person. Loaded for a command and unloaded after it: while a tech types,
# the console holds only its line discipline and dispatch. (Loops, not comprehensions: each
# of those is code of its own on the heap.)
from app import readout, waterfilter
from app.protocol import setting
from app.supplies import ITEMS, UNITS


def human(name, data):
    """A read command's words for a person, from its JSON (`brewmeter` prints the same)."""
    if name == "consumables":
        out = {}
        for k, v in data.items():
            out[k] = _supply(v)
        data = out
    elif name == "filter" and "due_at_litres" in data:
        data = dict(data)
        data["limits"] = "due at %g L or %d months" % (data.pop("due_at_litres"),
                                                      data.pop("due_at_months"))
    elif name == "status":
        data = dict(data)
        u, n = data.pop("flash_used_kib", None), data.pop("flash_total_kib", None)
        data["flash_used"] = "?" if u is None else "%d of %d KiB" % (u, n)
        w = data.pop("flash_wear_est_pct", None)
        data["flash_wear"] = "?" if w is None else "%.4f%% (estimate)" % w
        a = data.pop("last_sync_age_s", None)
        if a is not None:
            data["last_sync"] = "%s (%d s ago)" % (data["last_sync"], a)
    out = []
    if isinstance(data, dict):  # a table: the names in a column as wide as the longest
        w = 0
        for k in data:
            w = max(w, len(k))
        for k in sorted(data):
            out.append("%s  %s" % (k + " " * (w - len(k)), _fmt(data[k])))
        return "\n".join(out)
    if not data:
        return "(none)"
    for x in data:
        out.append(_fmt(x))
    return "\n".join(out)


def _fmt(v):
    if isinstance(v, dict):
        out = []
        for k in sorted(v):
            out.append("%s %s" % (k, v[k]))
        return ", ".join(out)
    return str(v)


# Command|what it does|...: one constant, not 26 (each string constant is an object on
# the heap while this is loaded).
_HELP = ("counters|what the machine has used|filter|the water filter|"
         "consumables|coffee, filter, descaler, tablets: left, days, order|"
         "refill ITEM --pin P|a new pack, filter (filter change), descale (descale done)|"
         "config set K V --pin P|change a setting|sync --pin P|sync now|"
         "reboot --pin P|restart the machine|"
         "service unlock --pin P|open a locked port (REPL, mpremote) for a while|"
         "events [N]|events waiting for the cloud|faults|faults since boot|"
         "config|settings in force|status|device, Wi-Fi, sync, memory|"
         "(any) --json|one line of JSON")


def read(con, name, args, wall):
    """The data of read command `name` (one of console.READS; one function rather than one
    each: each function is objects on the heap while it is loaded)."""
    d = con.device
    if name == "help":
        h = _HELP.split("|")
        out = {}
        for i in range(0, len(h), 2):
            out[h[i]] = h[i + 1]
        return out
    if name == "counters":
        return readout.usage(d.meter.c, d.profile.kinds)
    if name == "filter":
        c = d.meter.c
        dh = setting(d.config, "water_hardness_dh")
        return {"litres": c.filter_ml / 1000,
                "pump_hours": round(c.filter_pump_ms / 3600000, 2),
                "brews": c.filter_brews, "age_days": round(waterfilter.age_s(c, wall) / 86400, 1),
                "due": waterfilter.due(c, d.profile, wall, dh) or "no", "cycle": c.filters,
                "due_at_litres": round(d.profile.filter_litres * 10 / dh, 1),
                "due_at_months": d.profile.filter_months}
    if name == "consumables":
        sup = d.supplies
        per_day = d.per_day(wall)
        out = {}
        for item in ITEMS:
            used, cap, days = sup.level(item, d.config, d.profile, wall, per_day)
            it = sup.items[item]
            out[item] = {"pct": sup.pct(item, used, cap, d.profile, wall), "used": used,
                         "capacity": cap, "unit": UNITS[item], "cycle": it[0],
                         "order": it[2] or "none",
                         "days": None if days is None else round(days, 1)}
        return out
    if name == "events":
        n = 16
        if args:
            if not args[0].isdigit() or len(args[0]) > 3:  # (long: OverflowError in a slice)
                raise ValueError("usage: events [N], N a number from 0 to 999")
            n = int(args[0])
        return d.outbox.events[-n:] if n else []
    if name == "faults":
        out = []
        for f in d.faults:
            out.append("%s %s" % f)
        return out
    if name == "config":
        # Only the settings in force: secrets (device key, Wi-Fi password, PIN) never appear.
        return {"version": d.config_version, "settings": d.config}
    return con.status()


def _supply(v):
    # "70% left (30 of 100 units used), 7.0 days, order placed, cycle 3"
    return "%d%% left (%d of %d %s used), %s, order %s, cycle %d" % (
        v["pct"], v["used"], v["capacity"], v["unit"],
        "no forecast" if v["days"] is None else "%s days" % v["days"], v["order"], v["cycle"])
