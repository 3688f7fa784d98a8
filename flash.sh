#!/usr/bin/env bash
# Deploy the firmware to a board with mpremote: compile with mpy-cross for the device's
# bytecode version, copy only what changed, write the board profile and provisioning,
# verify by hash, restart, wait for the ready line. The device's counters are kept unless
# --erase-data. `./flash.sh --emulator` does it all on an emulated board and shows it
# counting. Sets up .venv on first use. `./flash.sh --help` for the options.
set -eu
. "$(dirname "$0")/tools/venv.sh"
exec "$VENV/bin/python" -c 'import sys; from brewmeter.flashsh import main; sys.exit(main())' "$@"
