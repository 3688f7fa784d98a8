# The app frozen into the firmware by firmware/manifest.py (the port's own modules and the
# app package), for boards flashed without deploying the app to the romfs partition.
set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/../../firmware/manifest.py)

list(APPEND MICROPY_DEF_BOARD
    MICROPY_HW_BOARD_NAME="brewmeter ESP32 (app frozen)"
)
