# The wall clock, trusted only once NTP has set it this boot: an ESP32's RTC starts at
# 2000-01-01 after power-on, and a wrong date would bill usage to the wrong day.
import asyncio
import socket
import struct
import time

from micropython import const

_NTP_DELTA_1900 = const(2208988800)  # seconds from 1900 (NTP) to 1970 (unix)

synced = False
_offset = 0  # unix seconds minus time.time() (whose epoch is 2000 on the ESP32)


def now():
    """Unix seconds, or 0 while the clock has not been set this boot."""
    return int(time.time()) + _offset if synced else 0


def set_unix(t):
    """Take `t` (unix seconds) as the time now."""
    global synced, _offset
    _offset = t - int(time.time())
    synced = True


async def ntp_query(host, port=123, timeout_ms=2000):
    """Ask an NTP server for the time, without blocking the event loop (the stock ntptime
    module blocks for up to a second). Returns unix seconds; raises OSError on failure."""
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        query = bytearray(48)
        query[0] = 0x1B  # version 3, client mode
        s.sendto(query, addr)
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            try:
                data = s.recv(48)
            except OSError:
                await asyncio.sleep_ms(20)
                continue
            if len(data) < 48 or data[0] & 0x07 != 4:  # not a server reply
                raise OSError("bad NTP reply")
            secs = struct.unpack("!I", data[40:44])[0]
            if secs == 0:
                raise OSError("NTP server not synchronised")
            return secs - _NTP_DELTA_1900
        raise OSError("no NTP reply")
    finally:
        s.close()
