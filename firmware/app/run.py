# The app: load the board profile, count boots, start the tasks. Later issues add storage,
# sync and the service console here.
import asyncio

from app import VERSION, hw
from app.counting import Meter
from app.profile import ProfileError, parse
from app.sensors import Sensors

PROFILE_PATH = "/board.json"


def load_profile(path=PROFILE_PATH):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ProfileError(path, "(file)", "missing: flash.sh writes it with --board")
    return parse(text, path)


async def main(profile):
    meter = Meter(profile)
    meter.boot(hw.reset_cause())
    sensors = Sensors(profile, meter)
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
