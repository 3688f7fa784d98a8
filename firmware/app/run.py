# The app: load the board profile, recover the counts from flash, start the tasks (sensors,
# and sync when the device is provisioned). The service console joins them later.
import asyncio
import json
from time import ticks_ms

from app import VERSION, hw
from app.device import Device
from app.sensors import Sensors
from app.store import DeviceFS

PROFILE_PATH = "/board.json"
PROVISION_PATH = "/provision.json"


def load_profile(path=PROFILE_PATH):
    """The validated board profile. The validator is needed once, at boot: it is unloaded
    afterwards (about 10 KB of heap on the unix port, 6 KB on an ESP32)."""
    import sys

    import app
    from app.profile import ProfileError, parse

    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ProfileError(path, "(file)", "missing: flash.sh writes it with --board")
    try:
        return parse(text, path)
    finally:
        sys.modules.pop("app.profile", None)
        if hasattr(app, "profile"):
            delattr(app, "profile")


def load_provision(path=PROVISION_PATH):
    """The provisioning flash.sh wrote (device id, key, Wi-Fi, cloud), or None."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def start_sync(device, prov):
    from app import tls
    from app.link import Wifi
    from app.syncer import Syncer

    wifi = prov["wifi"]
    url = prov["cloud_url"]
    ssl = tls.context(prov["ca_cert"]) if url.startswith("https://") else None
    syncer = Syncer(device, prov, Wifi(wifi["ssid"], wifi.get("password", "")), ssl)
    device.on_usage = syncer.usage
    return syncer


_device = None  # for run(): what to save when Ctrl-C stops the app
_syncer = None  # for the service console: the last sync's time and result


async def main(profile):
    global _device, _syncer
    device = _device = Device(profile, DeviceFS())
    device.boot(hw.reset_cause(), ticks_ms())
    tasks = [asyncio.create_task(Sensors(profile, device).run())]
    prov = load_provision()
    sync = "off (not provisioned)"
    if prov:
        try:
            _syncer = start_sync(device, prov)
            tasks.append(asyncio.create_task(_syncer.run()))
            sync = "on"
        except (ImportError, KeyError, ValueError) as e:  # no radio, or a bad provisioning
            sync = "off (%s)" % e
    print("brewmeter ready fw=%s board=%s sync=%s" % (VERSION, profile.board, sync))
    await asyncio.gather(*tasks)


def run():
    try:
        profile = load_profile()
    except ValueError as e:  # ProfileError
        # Stay at the REPL so the board can be re-flashed with a good profile.
        print("brewmeter: not started:", e)
        return
    try:
        asyncio.run(main(profile))
    except KeyboardInterrupt:
        # Ctrl-C drops to the REPL (mpremote and flash.sh rely on it): save what is not yet
        # saved (a rinse, the last seconds of water) first.
        if _device is not None and _device.meter is not None:
            _device.save(ticks_ms())
        raise
