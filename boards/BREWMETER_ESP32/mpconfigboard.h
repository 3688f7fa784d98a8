// brewmeter on a stock ESP32 module (4 MiB flash, no PSRAM), built out of tree with
// MicroPython's esp32 port: the ESP32_GENERIC configuration plus a ROMFS partition, so
// flash.sh deploys the app as a ROMFS image that runs in place from flash (docs/flashing.md,
// "Building the ESP32 firmware").

#define MICROPY_HW_BOARD_NAME "brewmeter ESP32"
#define MICROPY_HW_MCU_NAME "ESP32"

// vfs.VfsRom and vfs.rom_ioctl: the "romfs" partition of partitions-brewmeter.csv is
// mounted at /rom at boot, with /rom and /rom/lib on sys.path.
#define MICROPY_VFS_ROM (1)
