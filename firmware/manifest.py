# MicroPython manifest: freezes the brewmeter app into the firmware, so its bytecode runs
# from flash like a ROMFS deployment but without a romfs partition. Built by MicroPython's
# esp32 port with boards/BREWMETER_ESP32 and BOARD_VARIANT=FROZEN (docs/flashing.md). boot.py,
# main.py and the JSON files stay on the filesystem, where flash.sh writes them. That build
# has no ROM partition, so no update over the air: romslot (frozen too, as flash.sh deploys
# it) finds no slot there and the app takes no offer.
include("$(PORT_DIR)/boards/manifest.py")

package("app", files=(
    "__init__.py", "alerts.py", "console.py", "counters.py", "days.py",
    "device.py", "forecast.py", "http.py", "hw.py", "journal.py", "link.py", "meter.py",
    "orders.py", "outbox.py", "profile.py", "protocol.py", "readout.py", "reads.py",
    "release.py", "replwatch.py", "run.py", "sensors.py", "service.py", "signing.py", "startup.py",
    "supervisor.py", "supplies.py", "sync.py", "synctask.py", "tls.py", "update.py",
    "wallclock.py", "waterfilter.py",
), opt=3)
module("romslot.py", opt=3)
