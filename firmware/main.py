# Runs after boot.py on every boot. Ctrl-C interrupts it into the REPL (mpremote relies on it),
# except on a provisioned machine: off first, as in boot.py; the app decides for good.
import micropython

while True:
    try:
        micropython.kbd_intr(-1)
        import os

        locked = True
        try:
            os.stat("/provision.json")
        except OSError:
            locked = False
            micropython.kbd_intr(3)
        break
    except KeyboardInterrupt:
        pass
try:  # an update in hand (/slot.json): romslot.py finishes it before the app is imported
    os.stat("/slot.json")
except OSError:
    pass
else:
    try:
        import machine
        import romslot

        romslot.boot(lambda t: machine.reset())  # the trial's timer: held, and not romslot
        del romslot  # (out of sys.modules): freed here
    except Exception as e:  # noqa: BLE001 - the app starts whatever this did
        print("brewmeter: update:", e)
try:
    import app.run
except Exception as e:  # noqa: BLE001 - no app: a locked machine restarts, never stops at the REPL
    print("brewmeter: not started:", e)
    try:  # (rare: the provisioning read here only, for a "lock": false)
        import json

        with open("/provision.json") as f:
            locked = locked and json.load(f).get("lock") is not False
    except Exception:  # noqa: BLE001 - unreadable: it stays locked
        pass
    if locked:
        import machine

        machine.reset()
    raise
app.run.run()
