# Keeps the app's tasks running: each task but the counting is restarted after a failure,
# with a backoff, and its first failure of a kind per day becomes a `task_failed` fault (to
# the cloud with the outbox, and in the console's `faults`). The counting is not restarted
# here: an error in it escapes to run(), which saves and resets the machine.
import asyncio
import gc
from time import ticks_diff, ticks_ms

from micropython import const

FIRST_MS = const(1000)  # the first restart waits this long, then twice as long each time
MAX_MS = const(300000)  # ... up to 5 minutes
_DETAIL = const(60)  # bytes of the exception's message kept in the fault
HOOK_PATH = "/hook"


def backoff_ms(failures):
    """The wait before restarting a task that failed `failures` times in a row."""
    return min(FIRST_MS << min(failures - 1, 9), MAX_MS)


def detail(name, e):
    """The fault's detail: "TASK TYPE: message" with the message cut to 60 bytes."""
    return "%s %s: %s" % (name, e.__class__.__name__, str(e)[:_DETAIL])


class Supervisor:
    def __init__(self, device, hook=None):
        """`hook` (tests only, from take_hook()): "fail:NAME" makes task NAME raise once."""
        self.device = device
        self.seen = {}  # (task, exception type) -> day of its last fault
        self.hook = hook

    def failed(self, name, e, day):
        """Record a failure of task `name`; True if it is the first of its kind `day`."""
        key = (name, e.__class__.__name__)
        if self.seen.get(key) == day:
            return False
        self.seen[key] = day
        return True

    def _day(self):
        d = self.device
        return (d.wall() or d.up_s) // 86400

    async def keep(self, name, start, *args):
        """Run `start(*args)` (a coroutine function) for ever, restarting it after a
        failure. (Its arguments passed, not a lambda: that would be code held on the heap.)"""
        n = 0
        while True:
            began = ticks_ms()
            try:
                if self.hook == "fail:" + name:
                    self.hook = None
                    await asyncio.sleep_ms(500)
                    raise RuntimeError("test hook: %s made to fail" % name)
                await start(*args)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # MemoryError included; KeyboardInterrupt is not one
                if isinstance(e, MemoryError):
                    gc.collect()
                try:
                    print("brewmeter: task %s" % detail(name, e))  # the serial log
                    if self.failed(name, e, self._day()):
                        self.device.fault("task_failed", detail(name, e))
                except Exception:  # noqa: BLE001 - reporting it failed too: restart anyway
                    pass
            n = 1 if ticks_diff(ticks_ms(), began) > MAX_MS else n + 1  # ran well: anew
            await asyncio.sleep_ms(backoff_ms(n))


def take_hook(path=HOOK_PATH):
    """A test's request (written to the flash by the test), read and removed at boot, so it
    acts once. None on a normal device (no such file)."""
    import os

    try:
        with open(path) as f:
            word = f.read(32).strip()
        os.remove(path)
        return word
    except OSError:
        return None
