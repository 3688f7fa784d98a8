# The service console's core: bytes from the serial port in, text out. Pure: the shell
# passes the time. Line discipline as a plain terminal expects (picocom, screen): \r, \n or
# \r\n end a line, backspace/DEL erase, an over-long line is dropped whole with one error,
# bytes outside printable ASCII are ignored (commands are ASCII; MicroPython's decode would
# raise on invalid UTF-8).
# Read commands print aligned tables, or with --json exactly one line of JSON.
import json

from micropython import const

from app import readout, waterfilter
from app.protocol import setting
from app.supplies import ITEMS, UNITS

# Service actions (app/service.py, loaded only when one is asked for: it costs heap).
_ACTIONS = ("filter", "descale", "refill", "config", "sync", "reboot", "service")

MAX_LINE = const(120)  # longer lines are not commands: discarded, never buffered
PROMPT = b"brewmeter> "


class LineReader:
    """Assemble lines from arbitrary bytes without ever holding more than MAX_LINE.
    `echo` collects what a terminal should show of the typing (as the REPL echoes)."""

    def __init__(self):
        self.buf = bytearray()
        self.overflow = False
        self._cr = False
        self.echo = bytearray()

    def feed(self, data):
        """Complete lines (str) in `data`; None for a line that was too long."""
        out = []
        echo = self.echo
        for b in data:
            if b == 10 and self._cr:  # the \n of \r\n
                self._cr = False
                continue
            self._cr = b == 13
            if b in (10, 13):
                out.append(None if self.overflow else self.buf.decode())
                self.buf = bytearray()
                self.overflow = False
                echo.extend(b"\r\n")
            elif b in (8, 127):
                if self.buf:
                    self.buf = self.buf[:-1]
                    echo.extend(b"\b \b")
            elif b < 32 or b > 126:
                pass  # other control bytes and non-ASCII: not in any command; ignored
            elif len(self.buf) < MAX_LINE:
                self.buf.append(b)
                echo.append(b)
            else:
                self.overflow = True
        if len(echo) > 256:  # nobody is reading it (a tool sending a burst): drop it
            self.echo = echo[-256:]
        return out

    def take_echo(self):
        e = bytes(self.echo)
        self.echo = bytearray()
        return e


def _table(rows):
    w = max(len(k) for k, _ in rows) if rows else 0
    return "\n".join("%s  %s" % (k + " " * (w - len(k)), v) for k, v in rows)


class Console:
    def __init__(self, device, status=None, pin=None):
        """`status()` gives the shell's facts (uptime, Wi-Fi, last sync, heap, ...); `pin`
        is the provisioned service PIN (None: service actions off)."""
        self.device = device
        self.status = status or dict
        self.lines = LineReader()
        self.pin = pin
        self.guard = None  # service.PinGuard, made on the first service action
        self.pending = None  # ("sync",) or ("reboot",): for the shell to carry out

    async def feed(self, data, wall=0, now=None):
        """Bytes in; the text to write back (str): answers, each followed by a prompt."""
        out = []
        for line in self.lines.feed(data):
            if line is None:
                out.append("error: line too long (max %d)" % MAX_LINE)
            elif line.strip():
                try:
                    out.append(await self.command(line, wall, now))
                except Exception as e:  # a bug in one command must not end the console
                    out.append("error: internal: %s failed (%s)" % (
                        line.split()[0][:20], e.__class__.__name__))
        return "".join(x + "\n" for x in out)

    async def serve(self, data, wall=0, now=None):
        """What the serial port gets back for `data`: the echo of the typing, then any
        answers, each followed by a fresh prompt."""
        answers = await self.feed(data, wall, now)
        echo = self.lines.take_echo()
        if not answers:
            return echo
        return echo + answers.replace("\n", "\r\n").encode() + PROMPT

    async def command(self, line, wall=0, now=None):
        words = line.split()
        as_json = "--json" in words
        words = [w for w in words if w != "--json"]
        if not words:
            return "error: --json goes after a command; try help"
        name = words[0].lower()
        if name in _ACTIONS and (len(words) > 1 or name in ("sync", "reboot")):
            return await self._action(words, wall, now)
        if name not in _READS:
            return "error: unknown command %r; try help" % name[:20]
        try:
            data = _read(self, name, words[1:], wall)
        except ValueError as e:
            return "error: %s" % e
        if as_json:
            return json.dumps(data, separators=(",", ":"))
        return human(name, data)

    async def _action(self, words, wall, now):
        pin = None
        if "--pin" in words:
            i = words.index("--pin")
            pin = words[i + 1] if i + 1 < len(words) else ""
            words = words[:i] + words[i + 2:]
        from app import service

        now = now or 0
        if self.guard is None:
            self.guard = service.PinGuard(self.device, self.pin)
        try:
            await self.guard.check(pin, now)
            r = service.act(self.device, words, wall, now)
        except ValueError as e:
            return "error: %s" % e
        if isinstance(r, tuple):
            self.pending = r
            return "%s: started" % r[0]
        return r


def human(name, data):
    """A read command's words for a person, from its JSON (`brewmeter` prints the same)."""
    if name == "consumables":
        data = {k: _supply(v) for k, v in data.items()}
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
    if isinstance(data, dict):
        return _table([(k, _fmt(v)) for k, v in sorted(data.items())])
    if not data:
        return "(none)"
    return "\n".join([_fmt(x) for x in list(data)])


def _fmt(v):
    if isinstance(v, dict):
        return ", ".join("%s %s" % (k, v[k]) for k in sorted(v))
    return str(v)


# Command|what it does|...: one constant, not 26 (each string constant is an object on
# the heap while the console is loaded).
_HELP = ("counters|what the machine has used|filter|the water filter|"
         "consumables|coffee, filter, descaler, tablets: left, days, order|"
         "refill ITEM --pin P|a new pack, filter (filter change), descale (descale done)|"
         "config set K V --pin P|change a setting|sync --pin P|sync now|"
         "reboot --pin P|restart the machine|"
         "service unlock --pin P|open a locked port (REPL, mpremote) for a while|"
         "events [N]|events waiting for the cloud|faults|faults since boot|"
         "config|settings in force|status|device, Wi-Fi, sync, memory|"
         "(any) --json|one line of JSON")


# The read commands, in one function rather than one each (each function is objects on the
# heap while the console is loaded).
_READS = ("help", "counters", "filter", "events", "consumables", "faults", "config", "status")


def _read(con, name, args, wall):
    d = con.device
    if name == "help":
        h = _HELP.split("|")
        return {h[i]: h[i + 1] for i in range(0, len(h), 2)}
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
        return ["%s %s" % f for f in d.faults]
    if name == "config":
        # Only the settings in force: secrets (device key, Wi-Fi password, PIN) never appear.
        return {"version": d.config_version, "settings": d.config}
    return con.status()


def _supply(v):
    # "70% left (30 of 100 units used), 7.0 days, order placed, cycle 3"
    return "%d%% left (%d of %d %s used), %s, order %s, cycle %d" % (
        v["pct"], v["used"], v["capacity"], v["unit"],
        "no forecast" if v["days"] is None else "%s days" % v["days"], v["order"], v["cycle"])
