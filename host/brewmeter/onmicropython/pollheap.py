# Runs under the MicroPython unix port (tests/test_micropython.py): the firmware's sensor loop
# polled 10,000 times with the garbage collector off, printing how much the heap in use grew.
#   micropython pollheap.py FIRMWARE BOARD_MACHINE PROFILE ROOT [POLLS]
import gc
import os
import sys

fw, bm, prof, root = sys.argv[1:5]
n = int(sys.argv[5]) if len(sys.argv) > 5 else 10000
sys.path.insert(0, bm)  # the emulated board's machine (no bus: pins at their pulls)
sys.path.insert(1, fw)
import machine  # noqa: E402
from app.device import Device  # noqa: E402
from app.journal import DeviceFS  # noqa: E402
from app.profile import parse  # noqa: E402
from app.sensors import Sensors  # noqa: E402

with open(prof) as f:
    p = parse(f.read(), prof)
for d in ("/counts", "/state"):
    try:
        os.mkdir(root + d)
    except OSError:
        pass
dev = Device(p, DeviceFS(), root=root)
dev.boot(1, 0)
s = Sensors(p, dev)
wdt = machine.WDT(timeout=30000)
t = [0]
before = after = 0  # (new globals later would grow the module dict: not the loop)


def polls(k):
    now = t[0]
    for _ in range(k):  # what Sensors.run does each time round, on a clock of our own
        now += 10
        s.poll(now)
        wdt.feed()
    t[0] = now


polls(500)  # past boot's one-off allocations and the first powered seconds
gc.collect()
gc.disable()
before = gc.mem_alloc()
polls(n)
after = gc.mem_alloc()
gc.enable()
print("POLLS", n, "GROWTH", after - before)
