# `sys` for the emulated ESP32: the unix port's own, except that bytes written to
# sys.stdout.buffer reach the serial port as written. The serial port (emulator/serialport.py)
# turns every "\n" the interpreter writes into "\r\n", as the ESP32's cooked stdout does for
# print() and the REPL; but on the chip sys.stdout.buffer is raw, and binary protocols over the
# port rely on it (`mpremote mount`: its file contents, lengths and offsets). The launcher puts
# this module in sys.modules as "sys", as it does for vfs; each raw write goes out framed as
# \x00 ESC, four hex digits of its length, then the bytes, which the serial port passes on
# uncooked.
import sys as _sys

for _n in dir(_sys):
    if _n[0] != "_":
        globals()[_n] = getattr(_sys, _n)

_MAX = 0xFFFF


class _Raw:
    def __init__(self, real):
        self._real = real

    def write(self, buf, n=None):
        # write(buf) or write(buf, n), as MicroPython's streams take it.
        mv = memoryview(buf)
        if n is not None:
            mv = mv[:n]
        total = len(mv)
        i = 0
        while i < total:
            k = min(total - i, _MAX)
            self._real.write(b"\x00\x1b%04x" % k)
            self._real.write(mv[i:i + k])
            i += k
        return total

    def __getattr__(self, name):
        return getattr(self._real, name)


class _Stdout:
    def __init__(self, real):
        self._real = real
        self.buffer = _Raw(real.buffer)

    def write(self, s):
        return self._real.write(s)

    def __getattr__(self, name):
        return getattr(self._real, name)


stdout = _Stdout(_sys.stdout)
