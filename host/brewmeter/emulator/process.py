"""The emulated board's interpreter process: boots (a soft reset boots a new process in the
REPL mode the old one was in), resets and power cuts (SIGKILL, then a boot with the cause),
its output read without blocking, and the watchdog the firmware starts."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from brewmeter.emulator.common import (
    BOOT_TIMEOUT_S,
    CAUSES,
    LAUNCHER,
    SOFT_REBOOT,
    BoardError,
    _die_with_parent,
)
from brewmeter.onmicropython.esp32.machineconsts import (
    DEEPSLEEP_RESET,
    HARD_RESET,
    PWRON_RESET,
    SOFT_RESET,
    WDT_RESET,
)

_EMPTY_ROMFS = b"\xd2\xcd\x31\x00"  # extmod/vfs_rom.c: the filesystem record, no entries


def heap_reserve(micropython: str, rom: int) -> dict[str, int]:
    """What the board adds to the firmware's heap for `-X heapsize` on `micropython`, measured
    on it (pointers are half the size on a 32-bit build): the harness's own share (on a chip,
    C code or frozen) and the ROM partition's buffer (on a chip, mapped flash). One boot of
    the launcher on a scratch flash, an empty ROMFS image in a ROM of `rom` bytes (mounted:
    the mount is the harness's, as when the app is there), ended once it has reported them
    ("M" on the bus). {"harness_heap", "rom_heap": bytes held, "reserve": the -X heapsize
    bytes that hold both, the GC's tables included}."""
    st = os.stat(micropython)
    return dict(_probe(micropython, rom, st.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _probe(micropython: str, rom: int, mtime_ns: int) -> tuple[tuple[str, int], ...]:
    heapsize = 256 * 1024 + 2 * rom
    with tempfile.TemporaryDirectory() as d, socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(BOOT_TIMEOUT_S)
        if rom:
            Path(d, "probe.img.rom").write_bytes(_EMPTY_ROMFS.ljust(rom, b"\xff"))
        args = [micropython, "-X", f"heapsize={heapsize}", str(LAUNCHER),
                str(Path(d) / "probe.img"), str(srv.getsockname()[1]), "1", str(PWRON_RESET),
                "1", "240ac4000001", "0", str(rom)]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        got = None
        try:
            conn, _ = srv.accept()
            with conn, conn.makefile("rb") as bus:
                conn.settimeout(BOOT_TIMEOUT_S)
                bus.readline()  # the hello
                conn.sendall(b"K\n")
                for line in bus:
                    f = line.split()
                    if f[:1] == [b"M"] and len(f) == 4:
                        got = [int(x) for x in f[1:]]
                        break
        except OSError:  # (a timeout included)
            pass
        finally:
            proc.kill()
            out = proc.communicate(timeout=10)[0]
    if got is None:
        raise BoardError(f"{micropython} did not boot the board's launcher: {out[-2000:]!r}")
    harness, rom_heap, pool = got
    return (("harness_heap", harness), ("rom_heap", rom_heap),
            ("reserve", math.ceil((harness + rom_heap) * heapsize / pool)))


class Supervisor:
    """Board's process side (a mixin: the state is Board's, set in Board.__init__)."""

    def _spawn(self, cause: int, raw: bool) -> None:
        assert self._loop is not None
        if self._stopping:
            self._loop.stop()
            return
        if self._override is not None:  # reset or power cut while no process was running
            cause, raw, self._override = self._override, False, None
            self._hard_reset_effects(cause)
        self._boot_no += 1
        self._cause = cause
        self._boot_raw = raw
        self._booted = False
        self._kill_reason = None
        self._hold = True
        self._stdin_buf.clear()
        self._stdin_writing = False
        self._swallow = None
        self._last_cr = False
        self._frame, self._raw_left = b"", 0
        self._last_sigint = 0.0
        args = [self._mp, "-X", f"heapsize={self.heapsize}", "-i", str(LAUNCHER),
                str(self.image), str(self._bus_port), str(self._boot_no), str(cause),
                "1" if raw else "0", self.unique_id.hex(), str(self._rtc_offset), str(self.rom)]
        # Own session: a terminal's Ctrl-C reaches the supervisor, not the board.
        self._proc = proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, bufsize=0, preexec_fn=_die_with_parent)
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)
        self._loop.add_reader(proc.stdout.fileno(), self._child_readable, proc)
        self._boot_timer = self._loop.call_later(BOOT_TIMEOUT_S, self._boot_overdue, proc)

    def _boot_overdue(self, proc: subprocess.Popen[bytes]) -> None:
        # No hello from the launcher (it failed early): let input through to its REPL anyway.
        if proc is self._proc and not self._booted:
            self.last_exit = f"no hello from the launcher within {BOOT_TIMEOUT_S} s"
            self._release_input()

    def _child_readable(self, proc: subprocess.Popen[bytes]) -> None:
        if proc is not self._proc or proc.stdout is None:
            return
        try:
            data = os.read(proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._child_output(data)
        else:
            self._child_eof(proc)

    def _drain_child(self) -> None:
        # Take everything the interpreter wrote so far, before acting on a bus line it sent
        # after writing it.
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        while True:
            try:
                data = os.read(proc.stdout.fileno(), 65536)
            except OSError:
                return
            if not data:
                return
            self._child_output(data)

    def _child_eof(self, proc: subprocess.Popen[bytes]) -> None:
        assert self._loop is not None and proc.stdout is not None
        self._loop.remove_reader(proc.stdout.fileno())
        if self._stdin_writing and proc.stdin is not None:
            self._loop.remove_writer(proc.stdin.fileno())
            self._stdin_writing = False
        if self._boot_timer is not None:
            self._boot_timer.cancel()
        self._wait_exit(proc, time.monotonic())

    def _wait_exit(self, proc: subprocess.Popen[bytes], since: float) -> None:
        assert self._loop is not None
        if proc.poll() is None:
            if time.monotonic() - since > 2:  # stdout closed but still running: end it
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            self._loop.call_later(0.005, self._wait_exit, proc, since)
            return
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._exited(proc)

    def _exited(self, proc: subprocess.Popen[bytes]) -> None:
        assert self._loop is not None
        rc = proc.returncode
        self._bus_close()
        reason = self._kill_reason
        if self._stopping or (reason and reason[0] == "stop"):
            self._loop.stop()
            return
        delay = 0.0 if self._booted else 1.0  # a launcher that fails at once: no busy loop
        crash = None
        if reason is None and rc is not None and rc < 0 and rc != -signal.SIGINT:
            # Killed by something else (a crash): the ESP32 panics and restarts.
            crash = f"interpreter died of signal {-rc}"
            reason = ("hard", HARD_RESET)
        if reason is None or reason[0] == "soft":
            # Exit status -SIGINT: a Ctrl-C that landed as the interpreter dropped its
            # handler (a window of a few instructions); it reboots rather than hangs.
            self.last_exit = f"soft reset (exit status {rc})"
            self._emit(SOFT_REBOOT)
            self._loop.call_later(delay, self._spawn, SOFT_RESET, self._raw)
            return
        kind, arg = reason
        if kind == "deepsleep":
            self._hard_reset_effects(DEEPSLEEP_RESET)
            self.last_exit = f"deepsleep {arg} ms"
            self._loop.call_later(max(delay, arg / 1000), self._spawn, DEEPSLEEP_RESET, False)
            return
        self._hard_reset_effects(arg)
        self.last_exit = crash or CAUSES[arg]
        self._loop.call_later(delay, self._spawn, arg, False)

    def _hard_reset_effects(self, cause: int) -> None:
        self._cancel_wdt()
        self._raw = False  # the chip restarts pyexec in the friendly REPL
        if cause == PWRON_RESET:
            self._rtc_offset = 0  # no battery: the RTC starts again

    def _kill(self, reason: tuple[str, int]) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            if reason[0] == "hard":  # between two processes: the next boot is this one
                self._override = reason[1]
            return
        if self._kill_reason is None or reason[0] == "stop":
            self._kill_reason = reason
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)

    def _feed_wdt(self) -> None:
        assert self._loop is not None
        if self._wdt_timer is not None:
            self._wdt_timer.cancel()
        if self._wdt_ms is not None:
            self._wdt_timer = self._loop.call_later(self._wdt_ms / 1000, self._wdt_expired)

    def _wdt_expired(self) -> None:
        self._wdt_timer = None
        self._kill(("hard", WDT_RESET))

    def _cancel_wdt(self) -> None:
        # Only a hard reset stops the ESP32's watchdog; it runs on through soft resets.
        if self._wdt_timer is not None:
            self._wdt_timer.cancel()
        self._wdt_timer = None
        self._wdt_ms = None
