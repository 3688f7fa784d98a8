# The app: load the board profile, recover the counts from flash, start the tasks. Later
# issues add sync and the service console here.
import asyncio
from time import ticks_ms

from app import VERSION, hw
from app.device import Device
from app.profile import ProfileError, parse
from app.sensors import Sensors
from app.store import DeviceFS

PROFILE_PATH = "/board.json"


def load_profile(path=PROFILE_PATH):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ProfileError(path, "(file)", "missing: flash.sh writes it with --board")
    return parse(text, path)


async def main(profile):
    device = Device(profile, DeviceFS())
    device.boot(hw.reset_cause(), ticks_ms())
    sensors = Sensors(profile, device)
    print("brewmeter ready fw=%s board=%s" % (VERSION, profile.board))
    await sensors.run()


def run():
    try:
        profile = load_profile()
    except ProfileError as e:
        # Stay at the REPL so the board can be re-flashed with a good profile.
        print("brewmeter: not started:", e)
        return
    asyncio.run(main(profile))
