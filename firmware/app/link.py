# The network link: Wi-Fi station mode. Retries are paced by the sync schedule's backoff.
import asyncio
from time import ticks_diff, ticks_ms


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
