# The emulated ESP32's bus, inside the MicroPython unix port beside machine.py: the loopback
# TCP socket to the supervisor (host/brewmeter/emulator/), drained without blocking whenever
# firmware reads the hardware (Pin.value(), Counter.value(), disable_irq(), idle()); pin IRQ
# handlers run inside that drain (the PulseCounter fallback calls disable_irq() per take()).
# machine.py, machine_counter.py, machine_timers.py and the launcher (board_launch.py) share
# its state here, so none of them imports another back.
#
# Bus lines, supervisor -> board: "L gpio level", "P gpio n" (pulses), "C n tear" (arm a flash
# power cut after n program/erase operations), "A" (the serial port showed output: dupterm),
# "H" (report the heap), "K" (ack), "I" / "U" (a Ctrl-C to raise / no longer to raise),
# "G" (report the poll gap), "N ms" (host-name lookups block ms, then fail; 0: they answer).
# Board -> supervisor: "H boot" (hello), "R" (REPL starts), "i" (the Ctrl-C was raised),
# "X" (soft reset), "B" (machine.reset), "D ms" (deepsleep), "Z" (flash power died),
# "O gpio v" (output pin), "W ms" / "F" (watchdog start / feed), "p nbytes" / "e block" (a
# flash program / erase), "M bytes rom pool" (heap the harness holds, and apart, the ROM
# partition; the heap's pool), "T offset" (RTC set), "H bytes" (the heap in use, collected),
# "G ms polls" (the longest gap between two sensor polls, and the polls, since the last "G").
import _thread
import gc
import select
import socket
import time

import machineconsts as _c
from machineconsts import PWRON_RESET

_sock = None
_poller = None
_buf = b""
_acked = False
_cause = PWRON_RESET
_uid = b"\x24\x0a\xc4\x00\x00\x01"
_rtc_offset = 0
_flash = None  # the launcher's NorFlash, for armed power cuts
_cut = None  # (n, tear): the last cut armed, for a flash not yet made (in the hello's reply)
_levels = {}  # gpio -> level the supervisor drives (missing: the pull decides)
_pulls = {}  # gpio -> pull of the last Pin made on it
_outs = {}  # gpio -> level firmware drives
_irqs = {}  # gpio -> (pin, handler, trigger)
_counters = {}  # gpio -> [Counter]
_lock = _thread.allocate_lock()  # one thread at a time drains the bus (a Timer has its own)
_term = None  # the stream given to dupterm()
_heap_due = False  # the supervisor asked for the heap while it was locked
# A Ctrl-C, raised in the main thread at its next poll as the ESP32's UART schedules it, not
# inside a collection (where the unix port's SIGINT would leave the heap locked for good).
_intr_due = False
_main = _thread.get_ident()


def _send(msg):
    # Fire and forget: a full socket buffer drops the line (every line is a total or idempotent).
    if _sock is not None:
        try:
            _sock.send(msg)
        except OSError:
            pass


def _poll(timeout=0):
    # Apply everything the supervisor sent; returns at once when there is nothing, or when
    # another thread (a Timer's) is draining it.
    global _intr_due
    if not _lock.acquire(0):
        return
    try:
        if _heap_due:
            _heap()
        _drain(timeout)
    finally:
        _lock.release()
    if _intr_due and _thread.get_ident() == _main and not _heap_locked():
        _intr_due = False
        _send(b"i\n")
        raise KeyboardInterrupt


def _drain(timeout):
    global _buf
    while _poller is not None:
        for _ in _poller.ipoll(timeout):
            break
        else:
            return
        try:
            d = _sock.recv(512)
        except OSError:
            return
        if not d:  # the supervisor went away: the pins keep their last levels
            _close()
            return
        _buf += d
        i = _buf.find(b"\n")
        while i >= 0:
            line = _buf[:i]
            _buf = _buf[i + 1 :]
            _apply(line)
            i = _buf.find(b"\n")
        timeout = 0


def _close():
    global _sock, _poller
    if _sock is not None:
        _sock.close()
    _sock = _poller = None


def _apply(line):
    global _acked, _intr_due, _cut
    f = line.split()
    if not f:
        return
    k = f[0]
    if k == b"K":
        _acked = True
    elif k == b"L":
        _set_level(int(f[1]), int(f[2]))
    elif k == b"P":
        _pulses(int(f[1]), int(f[2]))
    elif k == b"A":  # the serial port showed output: what os.dupterm's write() would see
        if _term is not None:
            _term.write(b"A")
    elif k == b"H":  # the heap in use, collected (the control address's `heap`)
        _heap()
    elif k == b"G":
        gap_report()
    elif k == b"N":
        socket._hang_ms = int(f[1])
    elif k == b"I" or k == b"U":
        _intr_due = k == b"I"
    elif k == b"C":
        _cut = (int(f[1]), f[2] == b"1")
        if _flash is not None:
            _flash.cut_after, _flash.tear = _cut


def _heap_locked():
    # Inside a collection (littlefs closing a file from a finaliser polls the bus too).
    try:
        bytearray(16)
    except MemoryError:
        return True
    return False


def _heap():
    # Never collect with the heap locked: then the answer waits for the next poll.
    global _heap_due
    _heap_due = _heap_locked()
    if _heap_due:
        return
    gc.collect()
    _send(b"H %d\n" % gc.mem_alloc())


def _request(msg):
    # Send and wait for the supervisor's "K"; pin lines arriving meanwhile are applied.
    global _acked
    _acked = False
    _send(msg)
    while _poller is not None and not _acked:
        _poll(-1)
        if not _acked:
            time.sleep_ms(1)  # (another thread was draining the bus)


def _level(gpio):
    v = _levels.get(gpio)
    if v is None:  # nothing drives it: an input floats to its pull
        return 1 if _pulls.get(gpio) == _c.Pin.PULL_UP else 0
    return v


def _set_level(gpio, v):
    old = _level(gpio)
    _levels[gpio] = v
    irq = _irqs.get(gpio)
    if irq is not None and v != old and irq[2] & (_c.Pin.IRQ_RISING if v else _c.Pin.IRQ_FALLING):
        irq[1](irq[0])


def _pulses(gpio, n):
    for c in _counters.get(gpio, ()):
        c._v += n * c._per_pulse
    irq = _irqs.get(gpio)
    if irq is None:
        return
    pin, handler, trig = irq
    # A pulse leaves the pin where it was: a rising and a falling edge (or the reverse).
    calls = (1 if trig & _c.Pin.IRQ_RISING else 0) + (1 if trig & _c.Pin.IRQ_FALLING else 0)
    for _ in range(n * calls):
        handler(pin)


_gap_last = None
_gap_max = 0
_gap_polls = 0


def gap_report():
    global _gap_max, _gap_polls
    _send(b"G %d %d\n" % (_gap_max, _gap_polls))
    _gap_max = _gap_polls = 0


def _gap_tick():
    # Allocates nothing (small ints only): poll_alloc_bytes runs through here too.
    global _gap_last, _gap_max, _gap_polls
    now = time.ticks_ms()
    if _gap_last is not None:
        g = time.ticks_diff(now, _gap_last)
        if g > _gap_max:
            _gap_max = g
    _gap_last = now
    _gap_polls += 1


# -- for the launcher (board_launch.py)


def _boot(port, boot_no, cause, uid, rtc_offset):
    global _sock, _poller, _cause, _uid, _rtc_offset
    _cause = cause
    _uid = uid
    _rtc_offset = rtc_offset
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    s.setblocking(False)
    _sock = s
    _poller = select.poll()
    _poller.register(s, select.POLLIN)
    _request(b"H %d\n" % boot_no)  # the reply brings every pin level first


_msg = bytearray(b"? 0000000000\n")


def _report(kind, v):
    # "p nbytes" / "e block" without allocating: the flash may be called with the heap
    # locked (a file closed by its finaliser).
    m = _msg
    m[0] = kind
    for i in range(11, 1, -1):
        m[i] = 48 + v % 10
        v //= 10
    _send(m)


def _halt(msg):
    # Reset, deep sleep, soft reset, power loss: the supervisor kills this process.
    _send(msg)
    while True:
        time.sleep(1)
