# The wall clock, trusted only once NTP has set it this boot: an ESP32's RTC starts at
# 2000-01-01 after power-on, and a wrong date would bill usage to the wrong day.
import asyncio
import os
import socket
import struct
import time

from micropython import const

_NTP_DELTA_1900 = const(2208988800)  # seconds from 1900 (NTP) to 1970 (unix)
BUILT_DAY = const(19997)  # 2024-10-01 (days since 1970): an earlier time is never believed
STEP_MAX = const(3600)  # once set, NTP may move the clock at most this far (s)
DATE_SLACK = const(300)  # the cloud's Date may differ this much (s) before it is believed
_MONTHS = "JanFebMarAprMayJunJulAugSepOctNovDec"

synced = False
_offset = 0  # unix seconds minus time.time() (whose epoch is 2000 on the ESP32)


def now():
    """Unix seconds, or 0 while the clock has not been set this boot."""
    return int(time.time()) + _offset if synced else 0


def set_unix(t, limit=0):
    """Take `t` (unix seconds) as the time now if it is believable: not before BUILT_DAY
    and, with a `limit` (s) once the clock is set, within it. True if taken."""
    global synced, _offset
    if t // 86400 < BUILT_DAY or (limit and synced and abs(t - now()) > limit):
        return False
    _offset = t - int(time.time())
    synced = True
    return True


def cross_check(date):
    """The cloud's `date` (unix seconds, from the Date header of its reply to a signed
    report: the cloud we authenticate) against the clock: a clock set this boot that is
    further off than DATE_SLACK (a wrong NTP answer) takes the cloud's time. True if it
    did."""
    if synced and date and abs(date - now()) > DATE_SLACK:
        return set_unix(date)
    return False


def http_date(v):
    """Unix seconds of HTTP Date `v` (bytes, RFC 9110's IMF-fixdate: "Sun, 06 Nov 1994
    08:49:37 GMT"), or 0 if it is not one."""
    try:
        _, d, mon, y, hms, _ = v.decode().split(" ")
        m = _MONTHS.index(mon) if len(mon) == 3 else 1  # (ValueError if no month)
        if m % 3:
            return 0
        m = m // 3 + 1
        h, mi, sec = hms.split(":")
        y = int(y) - (m <= 2)  # days from civil (H. Hinnant), March-based years
        era = y // 400
        yoe = y - era * 400
        doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + int(d) - 1
        days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
        return days * 86400 + int(h) * 3600 + int(mi) * 60 + int(sec)
    except ValueError:
        return 0


def ntp_time(data, sent):
    """Unix seconds of NTP reply `data` to our query whose transmit timestamp was `sent`
    (8 bytes); OSError if it is not a sound answer to it."""
    if len(data) < 48 or data[0] & 0x07 != 4:  # not a server reply
        raise OSError("bad NTP reply")
    if data[24:32] != sent:
        raise OSError("NTP reply to another query")
    if data[0] >> 6 == 3 or not 1 <= data[1] <= 15:
        raise OSError("NTP server not synchronised")
    secs = struct.unpack("!I", data[40:44])[0]
    if secs == 0:
        raise OSError("NTP server not synchronised")
    return secs - _NTP_DELTA_1900


async def ntp_query(host, port=123, timeout_ms=2000):
    """Ask an NTP server at `host` (an IP address: app.link.resolve looks a name up) for the
    time, without blocking the event loop (the stock ntptime module blocks for up to a
    second). Returns unix seconds; raises OSError on failure or on an answer that is not
    sound (ntp_time)."""
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        query = bytearray(48)
        query[0] = 0x1B  # version 3, client mode
        sent = os.urandom(8)  # our transmit timestamp: the reply must carry it back
        query[40:48] = sent
        s.sendto(query, addr)
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            try:
                data = s.recv(48)
            except OSError:
                await asyncio.sleep_ms(20)
                continue
            return ntp_time(data, sent)
        raise OSError("no NTP reply")
    finally:
        s.close()
