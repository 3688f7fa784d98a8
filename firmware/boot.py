# Runs first on every boot; keep it minimal so a bad app can never stop the REPL coming up.
import gc

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
