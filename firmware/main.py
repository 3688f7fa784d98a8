# Runs after boot.py on every boot. Ctrl-C interrupts it into the REPL (mpremote relies on it).
import app.run

app.run.run()
