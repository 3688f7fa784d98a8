# The app: load the board profile, recover the counts from flash, start the tasks (sensors,
# and sync when the device is provisioned). The service console joins them later.
import asyncio
import json
from time import ticks_ms

from app import VERSION, hw
from app.device import Device
from app.profile import ProfileError, parse
from app.sensors import Sensors
from app.store import DeviceFS

PROFILE_PATH = "/board.json"
PROVISION_PATH = "/provision.json"


def load_profile(path=PROFILE_PATH):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ProfileError(path, "(file)", "missing: flash.sh writes it with --board")
    return parse(text, path)


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


async def main(profile):
    device = Device(profile, DeviceFS())
    device.boot(hw.reset_cause(), ticks_ms())
    tasks = [asyncio.create_task(Sensors(profile, device).run())]
    prov = load_provision()
    if prov:
        tasks.append(asyncio.create_task(start_sync(device, prov).run()))
    print("brewmeter ready fw=%s board=%s sync=%s" % (
        VERSION, profile.board, "on" if prov else "off (not provisioned)"))
    await asyncio.gather(*tasks)


def run():
    try:
        profile = load_profile()
    except ProfileError as e:
        # Stay at the REPL so the board can be re-flashed with a good profile.
        print("brewmeter: not started:", e)
        return
    asyncio.run(main(profile))
