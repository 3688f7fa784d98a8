# The network link: Wi-Fi station mode, and host names to addresses. Retries are paced by the
# sync schedule's backoff.
import asyncio
from time import ticks_diff, ticks_ms

_dns = None  # [host, answer]: the one lookup thread's; answer None while it runs


class Wifi:
    def __init__(self, ssid, password, timeout_ms=15000):
        import network

        self.wlan = network.WLAN(network.STA_IF)
        self.ssid = ssid
        self.password = password
        self.timeout_ms = timeout_ms

    def state(self):
        return "connected" if self.wlan.isconnected() else "down"

    async def up(self):
        """Return once connected; raise OSError if not within the timeout."""
        wlan = self.wlan
        if wlan.isconnected():
            return
        wlan.active(True)
        wlan.connect(self.ssid, self.password)
        t0 = ticks_ms()
        while not wlan.isconnected():
            if ticks_diff(ticks_ms(), t0) >= self.timeout_ms:
                wlan.disconnect()
                raise OSError("Wi-Fi: no connection to %r" % self.ssid)
            await asyncio.sleep_ms(100)


def _lookup(d):
    import socket

    try:
        a = socket.getaddrinfo(d[0], 0, socket.AF_INET)[0][-1]
        # ('1.2.3.4', port) on the ESP32 and CPython, a sockaddr_in's bytes on the unix port
        d[1] = a[0] if isinstance(a, tuple) else "%d.%d.%d.%d" % tuple(a[4:8])
    except Exception as e:  # noqa: BLE001 - any failure is the caller's to raise
        d[1] = e


async def resolve(host, timeout_ms=5000):
    """`host`'s IPv4 address (a string) without stopping the event loop: getaddrinfo is a
    blocking C call on every port (lwIP waits seconds for a DNS server that never answers),
    so it runs in a thread and is polled. OSError if it fails or takes over `timeout_ms`.
    One lookup at a time: a lookup still blocked is waited for, never doubled. An IP
    literal is its own address."""
    global _dns
    if host.replace(".", "").isdigit():  # (no top-level domain is all digits)
        return host
    import _thread

    t0 = ticks_ms()
    d = None
    while True:
        if _dns is None or _dns[1] is not None:  # no lookup running
            if d is not None:
                break  # ours answered
            d = _dns = [host, None]
            _thread.start_new_thread(_lookup, (d,))
        elif ticks_diff(ticks_ms(), t0) >= timeout_ms:
            raise OSError("DNS: no answer for %s" % host)
        await asyncio.sleep_ms(10)
    if isinstance(d[1], Exception):
        raise OSError("DNS: %s: %s" % (host, d[1]))
    return d[1]
