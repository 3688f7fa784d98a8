# Runs under the MicroPython unix port: the firmware's release checks (app/release.py) on
# release cases the host wrote (brewmeter/releasecheck.py: tests and bench figures).
#   micropython releasecheck.py FIRMWARE CASES         a line per case: "CASE name ok|refusal"
#   micropython releasecheck.py FIRMWARE CASE time N   best of N: "TIME signature_us hash_us"
#   micropython releasecheck.py FIRMWARE CASE heap     one check (the heap's figure)
#   micropython releasecheck.py FIRMWARE CASE base     the same, loaded but not checked
import gc
import json
import os
import sys
import time

fw, where = sys.argv[1:3]
mode = sys.argv[3] if len(sys.argv) > 3 else None
sys.path.insert(0, fw)
from app import release  # noqa: E402


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def load(d):
    c = json.loads(read(d + "/case.json"))
    key = bytes.fromhex(c["key"]) if c["key"] else None
    return (d, c, read(d + "/manifest.json"), read(d + "/manifest.sig"), key)


def offer(d, c, man, sig, key):
    return release.offer(man, sig, key, c["board"], tuple(c["micropython"]), c["mpy"],
                         c["running"], c["rom_bytes"])


def check(case, buf):
    m = offer(*case)
    if isinstance(m, str):
        return m
    with open(case[0] + "/app.romfs", "rb") as f:
        return release.image(f, m, buf) or "ok"


buf = bytearray(4096)  # the device's buffer, which an update borrows
if mode is None:
    for name in sorted(os.listdir(where)):
        print("CASE", name, check(load(where + "/" + name), buf))
elif mode == "time":
    case = load(where)
    best_sig = best_hash = 1 << 30
    for _ in range(int(sys.argv[4])):
        gc.collect()
        t0 = time.ticks_us()
        m = offer(*case)
        t1 = time.ticks_us()
        with open(where + "/app.romfs", "rb") as f:
            t2 = time.ticks_us()
            r = release.image(f, m, buf)
            t3 = time.ticks_us()
        if isinstance(m, str) or r is not None:
            raise SystemExit("not a good release: %s %s" % (m, r))
        best_sig = min(best_sig, time.ticks_diff(t1, t0))
        best_hash = min(best_hash, time.ticks_diff(t3, t2))
    print("TIME", best_sig, best_hash)
else:
    case = load(where)
    gc.collect()
    if mode == "heap" and check(case, buf) != "ok":
        raise SystemExit("not a good release")
