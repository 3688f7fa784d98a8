"""The emulated board's bus: the loopback socket to onmicropython/esp32/machine_bus.py, which
carries pin levels and flow pulses to the board and brings back outputs, flash wear, the
watchdog, the heap (the harness's and the app's), the sensor loop's poll gap and the REPL's
activity."""

from __future__ import annotations

import asyncio
from typing import Any

from brewmeter.onmicropython.esp32.machineconsts import HARD_RESET, PWRON_RESET, SOFT_RESET


class Bus:
    """Board's bus side (a mixin: the state is Board's, set in Board.__init__)."""

    async def _bus_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            hello = (await reader.readline()).split()
            if len(hello) != 2 or hello[0] != b"H" or int(hello[1]) != self._boot_no:
                return  # a process that is already gone
            self._bus = writer
            cut, self._boot_cut = self._boot_cut or b"", None  # (armed for this boot alone)
            writer.write(b"".join(b"L %d %d\n" % kv for kv in self._levels.items())
                         + (b"N %d\n" % self._dns_hang_ms if self._dns_hang_ms else b"")
                         + cut + b"K\n")
            self._hello()
            while True:
                line = await reader.readline()
                if not line:
                    break
                self._bus_line(line.split())
        except (ConnectionError, ValueError):
            pass
        finally:
            self._conns.discard(writer)
            if self._bus is writer:
                self._bus = None
            writer.close()

    def _bus_close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    def _bus_send(self, line: bytes) -> bool:
        if self._bus is None or self._bus.is_closing():
            return False
        self._bus.write(line)
        return True

    def _hello(self) -> None:
        self._booted = True
        self._intr_pending = None
        if self._boot_timer is not None:
            self._boot_timer.cancel()
        with self._lock:
            self.boots += 1
            self._lock.notify_all()
        for w in self._boot_waiters:
            if not w.done():
                w.set_result(self.boots)
        self._boot_waiters.clear()
        if not self._boot_raw:
            self._release_input()  # main.py may read the serial port

    def _bus_line(self, f: list[bytes]) -> None:
        if not f:
            return
        k = f[0]
        if k == b"R":  # the launcher is done: the REPL starts
            self._drain_child()
            if self._boot_raw:
                self._swallow = bytearray()
                self._child_write(b"\x01")  # Ctrl-A: pyexec enters the raw REPL
                self._release_input()
            self._bus_send(b"K\n")
        elif k == b"O":
            self._outputs[int(f[1])] = int(f[2])
        elif k == b"p":
            self._programs += 1
            self._bytes_programmed += int(f[1])
        elif k == b"e":
            b = int(f[1])
            self._block_erases[b] = self._block_erases.get(b, 0) + 1
        elif k == b"M":
            self.harness_heap = int(f[1])
            self.rom_heap = int(f[2]) if len(f) > 2 else 0
        elif k == b"H":
            for w in self._heap_waiters:
                if not w.done():
                    w.set_result(int(f[1]))
            self._heap_waiters.clear()
        elif k == b"G":
            if self._gap_asked is not None and not self._gap_asked.done():
                self._gap_asked.set_result((int(f[1]), int(f[2])))
        elif k == b"F":
            self._feed_wdt()
        elif k == b"W":
            self._wdt_ms = int(f[1])
            self._feed_wdt()
        elif k == b"T":
            self._rtc_offset = int(f[1])
        elif k == b"i":
            self._intr_taken()
        elif k in (b"X", b"B", b"Z", b"D"):
            self._drain_child()
            self._kill({b"X": ("soft", SOFT_RESET), b"B": ("hard", HARD_RESET),
                        b"Z": ("hard", PWRON_RESET)}.get(k) or ("deepsleep", int(f[1])))

    def _pin(self, ident: Any) -> int:
        if isinstance(ident, str) and not ident.isdigit():
            p = self.profile or {}
            if ident in p.get("inputs", {}):
                return int(p["inputs"][ident])
            if ident in ("flow", "service", "led") and f"{ident}_pin" in p:
                return int(p[f"{ident}_pin"])
            raise ValueError(f"unknown input {ident!r} (give a GPIO number or a profile name)")
        if isinstance(ident, bool) or not isinstance(ident, (int, str)):
            raise ValueError(f"bad pin {ident!r}")
        return int(ident)

    def _active_level(self) -> int:
        # Profiles default to active-low inputs (app/profile.py); without one, active high.
        return 0 if self.profile and self.profile.get("active_low", True) else 1

    def _press(self, cmd: dict[str, Any], pressed: bool) -> dict[str, Any]:
        pin = self._pin(cmd.get("input"))
        active = self._active_level()
        level = active if pressed else 1 - active
        self._levels[pin] = level
        self._bus_send(b"L %d %d\n" % (pin, level))
        return {"pin": pin, "level": level}
