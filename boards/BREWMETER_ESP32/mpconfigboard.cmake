# brewmeter on a stock ESP32 module (4 MiB flash): ESP32_GENERIC's settings, the partition
# table of this directory (app, romfs, vfs). BOARD_VARIANT=FROZEN (mpconfigvariant_FROZEN.cmake)
# freezes the app into the firmware as well.
set(IDF_TARGET esp32)

# ESP-IDF takes the custom partition table's file name from sdkconfig; an absolute path
# lets this board live outside MicroPython's tree (make BOARD_DIR=...).
set(BREWMETER_SDKCONFIG ${CMAKE_BINARY_DIR}/sdkconfig.brewmeter)
file(WRITE ${BREWMETER_SDKCONFIG}
    "CONFIG_PARTITION_TABLE_CUSTOM=y\n"
    "CONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${MICROPY_BOARD_DIR}/partitions-brewmeter.csv\"\n")

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    boards/sdkconfig.ble
    ${BREWMETER_SDKCONFIG}
)
