# The service console's core: bytes from the serial port in, text out. Pure: the shell
# passes the time. Line discipline as a plain terminal expects (picocom, screen): \r, \n or
# \r\n end a line, backspace/DEL erase, an over-long line is dropped whole with one error,
# bytes outside printable ASCII are ignored (commands are ASCII; MicroPython's decode would
# raise on invalid UTF-8).
# Read commands print aligned tables, or with --json exactly one line of JSON.
import json

from micropython import const

from app import unload

# Service actions (app/service.py, loaded only when one is asked for: it costs heap).
_ACTIONS = ("filter", "descale", "refill", "config", "sync", "reboot", "service")
# Read commands (app/reads.py, loaded for each one and unloaded after it).
READS = ("help", "counters", "filter", "events", "consumables", "faults", "config", "status")

MAX_LINE = const(120)  # longer lines are not commands: discarded, never buffered
PROMPT = b"brewmeter> "


class Console:
    def __init__(self, device, status=None, pin=None):
        """`status()` gives the shell's facts (uptime, Wi-Fi, last sync, heap, ...); `pin`
        is the provisioned service PIN (None: service actions off)."""
        self.device = device
        self.status = status or dict
        # The line being typed (split() assembles lines from arbitrary bytes, never holding
        # more than MAX_LINE), and the echo of the typing a terminal should show (as the
        # REPL echoes), taken by serve().
        self.buf = bytearray()
        self.overflow = False
        self._cr = False
        self.echo = bytearray()
        self.pin = pin
        self.guard = None  # service.PinGuard, made on the first service action
        self.pending = None  # ("sync",) or ("reboot",): for the shell to carry out

    def split(self, data):
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

    async def feed(self, data, wall=0, now=None):
        """Bytes in; the text to write back (str): answers, each followed by a prompt."""
        out = []
        for line in self.split(data):
            if line is None:
                out.append("error: line too long (max %d)" % MAX_LINE)
            elif line.strip():
                try:
                    out.append(await self.command(line, wall, now))
                except Exception as e:  # a bug in one command must not end the console
                    out.append("error: internal: %s failed (%s)" % (
                        line.split()[0][:20], e.__class__.__name__))
        return "\n".join(out) + "\n" if out else ""  # (no generator: code held on the heap)

    async def serve(self, data, wall=0, now=None):
        """What the serial port gets back for `data`: the echo of the typing, then any
        answers, each followed by a fresh prompt."""
        answers = await self.feed(data, wall, now)
        echo = bytes(self.echo)
        self.echo = bytearray()
        if not answers:
            return echo
        return echo + answers.replace("\n", "\r\n").encode() + PROMPT

    async def command(self, line, wall=0, now=None):
        words = line.split()
        as_json = "--json" in words
        while "--json" in words:
            words.remove("--json")
        if not words:
            return "error: --json goes after a command; try help"
        name = words[0].lower()
        if name in _ACTIONS and (len(words) > 1 or name in ("sync", "reboot")):
            return await self._action(words, wall, now)
        if name not in READS:
            return "error: unknown command %r; try help" % name[:20]
        from app import reads

        try:
            data = reads.read(self, name, words[1:], wall)
            if as_json:
                return json.dumps(data, separators=(",", ":"))
            return reads.human(name, data)
        except ValueError as e:
            return "error: %s" % e
        finally:
            unload("reads")

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


