# `socket` for the emulated ESP32: the unix port's own, but with a DNS that can stop
# answering (the supervisor's "N ms" on the bus, the control address's `dns`). Then a lookup
# of a host name blocks the thread that asks for `ms` (on an ESP32, lwIP retries a silent
# server for seconds inside getaddrinfo, a C call) and fails as the ESP32 port's does; IP
# literals still answer at once, as they need no server. Everything else is the real module.
import sys
import time

_path = sys.path[:]
sys.path.clear()  # an empty sys.path imports the built-in, not this file (py/builtinimport.c)
try:
    import socket as _real
finally:
    sys.path.extend(_path)
    _path = None

_hang_ms = 0  # set by machine.py from the bus: 0, lookups answer


def __getattr__(name):  # the rest is the real module's
    return getattr(_real, name)


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    ms = _hang_ms
    p = host.split(".")
    if ms and not (len(p) == 4 and all(x.isdigit() for x in p)):  # a name, not an IP literal
        time.sleep_ms(ms)
        raise OSError(-202)  # EAI_FAIL, as the ESP32 port raises it
    return _real.getaddrinfo(host, port, af, type, proto, flags)
