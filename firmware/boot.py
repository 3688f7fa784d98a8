# Runs first on every boot; keep it minimal: a bad app must never stop it.
import micropython

# A provisioned machine's port is locked (app/run.py): Ctrl-C is off before anything else, as
# main.py does again (each file runs with Ctrl-C on). One that came before kbd_intr(-1) is
# raised at the next branch, inside this try. Only an unprovisioned board turns it back on
# here; the app decides for a provisioning that says "lock": false.
while True:
    try:
        micropython.kbd_intr(-1)
        import os

        try:
            os.stat("/provision.json")
        except OSError:
            micropython.kbd_intr(3)
        break
    except KeyboardInterrupt:
        pass
import gc  # noqa: E402

# Whatever runs next (the app, or the REPL for mpremote), the machine never stays at an idle
# REPL: app/replwatch.py resets it back into the app once the port is quiet (the app, when
# it starts, takes over).
try:
    from app import replwatch

    replwatch.arm()
    del replwatch  # the app unloads it: no reference may stay here
except ImportError:
    pass  # no firmware on the board yet
except Exception as e:  # noqa: BLE001 - the REPL must come up whatever fails here
    print("brewmeter: REPL watch not armed:", e)
gc.collect()
