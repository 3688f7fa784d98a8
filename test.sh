#!/usr/bin/env bash
# The whole test suite: lint, a type check of firmware/ against the ESP32 stubs, then pytest
# (CPython and the MicroPython unix port). Sets up .venv on first use.
set -eu
cd "$(dirname "$0")"
. tools/venv.sh
. tools/chromium.sh  # Debian's Chromium, for the web console's browser tests
echo "== ruff" && ruff check .
# The stubs' typeshed (MicroPython's stdlib) replaces CPython's, as micropython-stubs documents.
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "== pyright (firmware/ against micropython-esp32-stubs)"
pyright -p pyrightconfig.json -t "$site"
echo "== pytest" && exec pytest "$@"
