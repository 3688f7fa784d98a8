# While the REPL has the serial port instead of the app (Ctrl-C, mpremote, flash.sh): a
# periodic machine.Timer keeps the watchdog fed as long as the REPL is in use, and once the
# port has been quiet for the profile's repl_idle_s it resets the machine back into the app.
# Use is seen through os.dupterm: the REPL writes everything it shows (the echo of typing,
# answers, the raw REPL's OK and flow control) to a dupterm stream as well. On the ESP32 a
# timer's callback is scheduled, and the scheduler runs while the REPL waits for input.
# Armed by boot.py (every boot, the raw REPL's included) and by run() when Ctrl-C stops the
# app; disarmed when the app starts. Loaded only then: no heap for it while the app runs.
import io
from time import ticks_diff, ticks_ms

import machine

try:
    from os import dupterm
except ImportError:  # the unix port (the emulated board) has no os.dupterm: its machine does
    from machine import dupterm  # type: ignore

PROFILE_PATH = "/board.json"
STOPPED_PATH = "/stopped"  # when the app was stopped into the REPL (unix time)

_timer = None


class Tap(io.IOBase):
    """A dupterm stream that only notes when the REPL last wrote something."""

    def __init__(self):
        self.last = ticks_ms()

    def write(self, buf):
        self.last = ticks_ms()
        return len(buf)

    def readinto(self, buf):
        return None  # never input: the REPL reads the port itself

    def ioctl(self, req, arg):
        return 0


def settings(path=PROFILE_PATH):
    """(repl_idle_s, wdt_s) from the board profile, read without the validator (boot.py):
    defaults for what is missing or unreadable, values held to the validator's ranges (a bad
    profile stops the app, never the REPL)."""
    import json

    idle, wdt = 300, 30
    try:
        with open(path) as f:
            p = json.loads(f.read(4096))
        idle = min(max(int(p.get("repl_idle_s", idle)), 5), 86400)
        wdt = min(max(int(p.get("wdt_s", wdt)), 2), 600)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return idle, wdt


def quiet_too_long(now, last, idle_ms):
    return ticks_diff(now, last) >= idle_ms


def arm(idle_s=None, wdt_s=None):
    global _timer
    if idle_s is None or wdt_s is None:
        idle_s, wdt_s = settings()
    idle_ms = idle_s * 1000
    disarm()
    tap = Tap()
    dupterm(tap, 0)
    wdt = machine.WDT(timeout=wdt_s * 1000)  # (already running since the app started it)

    def check(_t):
        if quiet_too_long(ticks_ms(), tap.last, idle_ms):
            machine.reset()  # back to the app; the next boot says how long it was stopped
        else:
            wdt.feed()

    _timer = machine.Timer(0)
    _timer.init(mode=machine.Timer.PERIODIC, period=1000, callback=check)


def disarm():
    global _timer
    if _timer is not None:
        _timer.deinit()
        _timer = None
        dupterm(None, 0)


def stopped(wall):
    """The app stops into the REPL now (unix time `wall`): noted for the next boot."""
    try:
        with open(STOPPED_PATH, "w") as f:
            f.write("%d" % wall)
    except OSError:
        pass


def stopped_for(wall):
    """Seconds the app was stopped, if it was (None if not; -1 if the clock cannot tell:
    a power cut restarts it), and forgets it."""
    import os

    try:
        with open(STOPPED_PATH) as f:
            at = int(f.read(16))
        os.remove(STOPPED_PATH)
    except (OSError, ValueError):
        return None
    d = wall - at
    return d if 0 <= d < 10 * 365 * 86400 else -1
