# machine.WDT, machine.Timer and machine.RTC for the emulated ESP32 (machine.py beside this
# file imports them into `machine`). Inside the MicroPython unix port, as machine.py.
import _thread
import time

import machine_bus as _bus
import machineconsts as _c


class WDT:
    # The supervisor keeps the timer, so a board stuck anywhere (even in C) is still reset.
    # As the ESP32's: no deinit, it runs on through soft resets, only a hard reset stops it.
    # Feeds reach the supervisor at most every 100 ms (the sensor loop feeds every 10 ms).
    _fed = 0

    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("timeout")
        _bus._send(b"W %d\n" % timeout)

    def feed(self):
        now = time.ticks_ms()
        if time.ticks_diff(now, WDT._fed) >= 100:
            WDT._fed = now
            _bus._send(b"F\n")


class Timer(_c.Timer):
    # machine.Timer with a thread per timer: as on the ESP32, where a timer's callback is
    # scheduled and runs whenever the VM checks for pending work, including while the REPL
    # waits for input (the unix port's REPL releases the GIL while it reads). A soft reset
    # ends the process, and with it every timer, as the ESP32's soft reset deinits them.
    # A hardware timer (id >= 0) is one state whichever object drives it: the ESP32 port's
    # Timer(id) returns the object it keeps per id, so Timer(1).deinit() stops the timer
    # another Timer(1) armed. A virtual timer (id -1) is its own.
    _hw = {}  # id -> [generation]

    def __init__(self, id=-1, *args, **kwargs):
        self._gen = Timer._hw.setdefault(id, [0]) if id >= 0 else [0]
        if args or kwargs:
            self.init(*args, **kwargs)

    def init(self, mode=_c.Timer.PERIODIC, period=-1, callback=None, freq=-1):
        if freq > 0:
            period = 1000 // freq
        self._gen[0] += 1
        _thread.start_new_thread(self._run, (self._gen[0], mode, max(1, period), callback))

    def _run(self, gen, mode, period, callback):
        while True:
            time.sleep_ms(period)
            if gen != self._gen[0]:
                return
            _bus._poll()
            if callback is not None:
                callback(self)
            if mode == Timer.ONE_SHOT:
                return

    def deinit(self):
        self._gen[0] += 1


class RTC:
    # The host clock plus an offset (_bus._rtc_offset, set at boot) that survives soft and
    # hard resets, not a power cut.
    def __init__(self, id=0):
        pass

    def datetime(self, dt=None):
        if dt is None:
            t = time.localtime(int(time.time()) + _bus._rtc_offset)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        t = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        _bus._rtc_offset = t - int(time.time())
        _bus._send(b"T %d\n" % _bus._rtc_offset)

    def init(self, dt):
        self.datetime(dt)
