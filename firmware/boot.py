# Runs first on every boot; keep it minimal so a bad app can never stop the REPL coming up.
import gc

gc.collect()
