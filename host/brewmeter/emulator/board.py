"""The emulated ESP32 board: a MicroPython unix-port process behind a pseudo-terminal, so
unmodified `mpremote connect PORT ...` and pyserial talk to it as to a real board.

The supervisor (`Board`, one background thread running an asyncio loop) owns:

- the serial port: a pty pair in raw mode. `Board.serial_port` is a link to its slave beside
  the flash image (IMAGE.tty), as /dev/serial/by-id/... links to a USB adapter: mpremote 1.29
  reads a /dev/pts/N path with blocking reads (its QEMU mode), so a device that stays silent
  (a locked port) would hang it, where it gives up after its 10 s timeout on a real adapter.
  Output written while no program has the port open is dropped, as a UART's is.
- the interpreter: `micropython -X heapsize=N -i board_launch.py ...` on plain pipes, not a
  tty. On a tty the unix port's REPL flushes pending input (tcsetattr TCSAFLUSH) every time
  it returns to a prompt, which loses what mpremote sends right after its Ctrl-C; on pipes
  nothing is lost and the REPL, raw REPL and raw-paste behave as pyexec does on the device.
  Output is cooked as the ESP32's stdout is: every lone "\\n" goes out as "\\r\\n".
- Ctrl-C: the supervisor takes 0x03 out of the input and sends SIGINT instead exactly when
  the interpreter has a SIGINT handler installed, i.e. while the device would treat Ctrl-C
  as an interrupt (code running with the interrupt char set, /proc/PID/status SigCgt);
  otherwise 0x03 goes through as a character (REPL line editing, raw REPL).
- resets: when the process ends by itself (Ctrl-D at a REPL, SystemExit, machine.soft_reset())
  the supervisor prints the ESP32's "MPY: soft reboot\\r\\n" (ports/esp32/main.c) and boots a
  new process on the same flash, in the REPL mode the old one was in: from the raw REPL it
  runs boot.py only and comes back to "raw REPL; CTRL-B to exit\\r\\n>" (pyexec.c), which is
  what mpremote's default soft reset expects. reset, power_cut and an unfed WDT kill it
  (SIGKILL) and boot with HARD_RESET, PWRON_RESET, WDT_RESET.
- the bus: a loopback socket to board_machine/machine.py (pin levels, pulses, wear, WDT).
- the control address: JSON lines on 127.0.0.1 (`BoardControl` is a client).

Not emulated: the REPL banner and sys.platform are the unix port's ("linux"), `time` is the
host's clock, and the "\n" cooking also applies to bytes written to sys.stdout.buffer.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import tty
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brewmeter.mp import tool
from brewmeter.onboard.board_machine import machineconsts
from brewmeter.onboard.board_machine.machineconsts import (
    DEEPSLEEP_RESET,
    HARD_RESET,
    PWRON_RESET,
    SOFT_RESET,
    WDT_RESET,
)

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE.parent / "onboard" / "board_launch.py"
REPO = HERE.parents[2]
BOARDS = REPO / "boards"

CAUSES = dict(enumerate(machineconsts.CAUSES, 1))  # reset cause -> its name in `machine`
SOFT_REBOOT = b"MPY: soft reboot\r\n"  # ports/esp32/main.c, soft_reset_exit
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"  # shared/runtime/pyexec.c
FRIENDLY_BANNER = b'Type "help()" for more information.\r\n'  # pyexec.c, friendly REPL
DEFAULT_HEAP = 56 * 1024
# What the harness itself keeps on the board's heap (norflash, this machine module, the
# launcher), which on an ESP32 is C code or frozen: added to -X heapsize so firmware gets
# `heap` bytes as on the device. status() reports the measured figure ("harness_heap").
HARNESS_HEAP = 36 * 1024
# The ROM partition's size when the profile gives none: the "romfs" partition of MicroPython's
# ports/esp32/partitions-4MiB-romfs.csv. On the unix port its bytes sit in one heap buffer
# (on a chip: memory-mapped flash); the board adds that buffer, with the GC's tables for it,
# to -X heapsize, so the firmware's `heap` and every heap figure leave the ROM out.
DEFAULT_ROM = 128 * 1024
ROM_BLOCK = 4096


def rom_heap(rom: int) -> int:
    """Heap the ROM partition takes on the unix port (board_machine/romvfs.py and its
    NorFlash: the bytes, one erased block), with the GC's allocation tables (3 bits per
    16-byte block); status() reports the measured figure ("rom_heap")."""
    return (rom + ROM_BLOCK) * 131 // 128 + 2048 if rom else 2048
CTRL_C = 0x03
# A raw write to sys.stdout.buffer on the board (board_machine/rawsys.py): RAW_FRAME, its
# length in 4 hex digits, then the bytes, passed on uncooked.
RAW_FRAME = b"\x00\x1b"
RAW_HEAD = len(RAW_FRAME) + 4
# A second SIGINT that lands before the first is handled makes the unix port exit(1): one
# per process per SIGINT_GAP_S.
SIGINT_GAP_S = 0.1
BOOT_TIMEOUT_S = 10.0
TRANSCRIPT_MAX = 1 << 20
PENDING_MAX = 1 << 20  # serial output waiting for a slow reader
STDIN_MAX = 1 << 16  # input the interpreter has not read yet (a UART RX buffer overflows too)


class BoardError(RuntimeError):
    pass


def parse_size(text: str | int | None) -> int | None:
    """'56K', '1M', '57344' -> bytes, as micropython's -X heapsize takes them."""
    if text is None or isinstance(text, int):
        return text
    t = text.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(t[-1:], 1)
    return int(t[:-1] if mult > 1 else t) * mult


def load_profile(name_or_path: str) -> tuple[dict[str, Any], str]:
    """A board profile (boards/NAME.json or a path): its data and its text."""
    p = Path(name_or_path)
    if p.suffix != ".json" and not p.is_file():  # boards/BREWMETER_ESP32/ is no profile
        p = BOARDS / f"{name_or_path}.json"
    text = p.read_text()
    return json.loads(text), text


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    # In the child before exec: SIGKILL when the supervisor's thread goes, however it goes.
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_live: weakref.WeakSet[Board] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # A board the program forgot to stop must not outlive it (main.py never reads stdin EOF).
    for b in list(_live):
        b.stop_sync()


def _sigint_caught(pid: int) -> bool:
    # The unix port installs its SIGINT handler exactly while the interrupt char is set.
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return False


def install(image: str | Path, firmware_dir: str | Path | None = None,
            profile_text: str | None = None) -> list[str]:
    """Copy a firmware tree (and /board.json) onto the image's littlefs, as flash.sh does over
    mpremote; files already there with the same bytes are left alone (no wear). Formats the
    image if it holds no file system. Returns the paths written."""
    from littlefs import LittleFSError

    from brewmeter.emulator import lfs
    from brewmeter.onboard.norflash import NorFlash

    flash = NorFlash(path=str(image))
    written = []
    try:
        try:
            fs = lfs.mount(flash)
        except LittleFSError:
            lfs.format(flash)
            fs = lfs.mount(flash)
        files: list[tuple[str, bytes]] = []
        if firmware_dir is not None:
            root = Path(firmware_dir)
            for p in sorted(root.rglob("*")):
                if p.is_file() and "__pycache__" not in p.parts:
                    files.append(("/" + p.relative_to(root).as_posix(), p.read_bytes()))
        if profile_text is not None:
            files.append(("/board.json", profile_text.encode()))
        for path, data in files:
            parts = path.split("/")[1:-1]
            for i in range(len(parts)):
                d = "/" + "/".join(parts[: i + 1])
                with contextlib.suppress(LittleFSError, FileExistsError):
                    fs.mkdir(d)
            try:
                same = lfs.read_file(fs, path) == data
            except (LittleFSError, OSError):
                same = False
            if not same:
                lfs.write_file(fs, path, data, mtime_ns=-1)
                written.append(path)
        fs.unmount()
    finally:
        flash.close()
    return written


class Board:
    """An emulated ESP32 on `image` (a 2 MiB NOR flash image, created blank if missing).

    `firmware_dir`: a tree to copy onto the flash before the first boot (with
    `board_profile`, also written as /board.json). `board_profile` (name in boards/ or path)
    also names the inputs for press/release and gives the heap size. `heap`: bytes or '56K'.
    `rom`: the ROM partition's size in bytes (default: the profile's `rom_bytes`, else 128
    KiB; 0: no ROM partition), kept in IMAGE.rom, created erased if missing or resized.
    """

    def __init__(self, image: str | Path, firmware_dir: str | Path | None = None,
                 board_profile: str | Path | None = None, heap: int | str | None = None, *,
                 control_port: int = 0, control_host: str = "127.0.0.1",
                 unique_id: bytes | None = None, micropython: str | None = None,
                 rom: int | None = None) -> None:
        self.image = Path(image).resolve()
        self._lock_fd = -1
        self.firmware_dir = Path(firmware_dir) if firmware_dir is not None else None
        self.profile: dict[str, Any] | None = None
        self._profile_text = None
        if board_profile is not None:
            self.profile, self._profile_text = load_profile(str(board_profile))
        profile_heap = self.profile.get("heap_bytes") if self.profile else None
        self.heap = parse_size(heap) or profile_heap or DEFAULT_HEAP
        # The ROM partition: its bytes in IMAGE.rom, beside the vfs partition's image.
        if rom is None:
            rom = self.profile.get("rom_bytes", DEFAULT_ROM) if self.profile else DEFAULT_ROM
        if rom % ROM_BLOCK:
            raise ValueError(f"a ROM partition is whole {ROM_BLOCK}-byte blocks, not {rom}")
        self.rom = rom
        self.rom_image = self.image.with_name(self.image.name + ".rom")
        self.unique_id = unique_id or (
            b"\x24\x0a\xc4" + hashlib.sha256(str(self.image).encode()).digest()[:3])
        self._mp = micropython or tool("micropython")
        self._control_bind = (control_host, control_port)
        self._bus_port = 0
        self.serial_port = ""
        self.control_address: tuple[str, int] = ("", 0)

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Condition()
        self._transcript = bytearray()
        self._transcript_base = 0  # bytes dropped from the front of the transcript
        self._stopping = False

        # serial side
        self._master = -1
        self._slave_poll: select.poll | None = None
        self._client = False
        self._pending = bytearray()
        self._writing = False
        self._recent = bytearray()  # output since the port was last seen closed
        self._activity = 0.0  # when the bus last heard of serial output ("A")

        # interpreter
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdin_buf = bytearray()
        self._stdin_writing = False
        self._hold = True  # input waits until the new boot can take it
        self._held = bytearray()
        self._boot_no = 0
        self._boot_raw = False
        self._booted = False
        self._cause = PWRON_RESET
        self._kill_reason: tuple[str, int] | None = None
        self._override: int | None = None
        self._raw = False  # the REPL mode seen last in the output
        self._tail = b""
        self._last_cr = False
        self._frame = b""  # the start of a raw frame's header, until the rest comes
        self._raw_left = 0  # bytes of a raw frame still to pass on uncooked
        self._swallow: bytearray | None = None
        self._last_sigint = 0.0
        self._boot_timer: asyncio.TimerHandle | None = None
        self._boot_waiters: list[asyncio.Future[int]] = []
        self.last_exit: str | None = None
        self.boots = 0

        # bus
        self._bus: asyncio.StreamWriter | None = None
        self._bus_server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._control_server: asyncio.base_events.Server | None = None
        self._levels: dict[int, int] = {}
        self._outputs: dict[int, int] = {}
        self._pulse_totals: dict[int, int] = {}
        self._pulses_lost = 0
        self._programs = 0
        self._bytes_programmed = 0
        self._block_erases: dict[int, int] = {}
        self.harness_heap: int | None = None
        self.rom_heap: int | None = None  # what the ROM partition's buffer took, measured
        self._wdt_ms: int | None = None
        self._wdt_timer: asyncio.TimerHandle | None = None
        self._rtc_offset = 0
        if self.profile:
            idle = 1 if self.profile.get("active_low", True) else 0
            for pin in self.profile["inputs"].values():
                self._levels[int(pin)] = idle
            self._levels[int(self.profile["flow_pin"])] = 0

    # -- life cycle (any thread)

    def start_sync(self, timeout: float = BOOT_TIMEOUT_S) -> Board:
        """Install the firmware if asked, open the port and boot; returns once the flash is
        mounted (boot.py and main.py are then starting)."""
        if self._thread is not None:
            raise BoardError("board already started")
        self._lock_image()
        first_boot = self.boots + 1  # a stopped board can start again (power back on)
        self._stopping = False
        self._client = False
        self._pending.clear()
        self._recent.clear()
        self._hold, self._held = True, bytearray()
        self._raw, self._override, self._rtc_offset = False, None, 0
        self._wdt_ms = self._wdt_timer = None
        if self.firmware_dir is not None:
            install(self.image, self.firmware_dir, self._profile_text)
        if self.rom and (not self.rom_image.exists()
                         or self.rom_image.stat().st_size != self.rom):
            self.rom_image.write_bytes(b"\xff" * self.rom)  # a new partition table: erased
        master, slave = os.openpty()
        tty.setraw(slave)  # no "\n" -> "\r\r\n" for programs that do not set raw mode
        link = self.image.with_name(self.image.name + ".tty")
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(slave))
        self.serial_port = str(link)
        os.close(slave)  # a client's open/close then shows on the master as POLLHUP
        os.set_blocking(master, False)
        self._master = master
        self._slave_poll = select.poll()
        self._slave_poll.register(master, select.POLLIN)
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._setup())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._teardown())
            loop.close()

        self._thread = threading.Thread(target=run, name="brewmeter-board", daemon=True)
        self._thread.start()
        _live.add(self)
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            os.close(master)
            self._unlock_image()
            raise failure[0]
        try:
            self.wait_boot(first_boot, timeout)
        except BaseException:
            self.stop_sync()
            raise
        return self

    def stop_sync(self) -> None:
        """Kill the interpreter and close everything; no process is left behind."""
        _live.discard(self)
        if self._thread is None:
            self._unlock_image()
            return
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._begin_stop)
        self._thread.join(10)
        self._thread = None
        self._reap_now()  # in case the loop could not
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        self._unlock_image()

    def _lock_image(self) -> None:
        """One board per image: two would each write the other's flash (IMAGE.lock, held
        while this board runs, names the process that holds it)."""
        import fcntl

        fd = os.open(self.image.with_name(self.image.name + ".lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BoardError(f"{self.image} is in use by another emulated board (process "
                             f"{holder}): stop it, or give another --image") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock_image(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # (closing releases the flock)
            self._lock_fd = -1

    async def start(self, timeout: float = BOOT_TIMEOUT_S) -> Board:
        return await asyncio.to_thread(self.start_sync, timeout)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    def __enter__(self) -> Board:
        return self.start_sync()

    def __exit__(self, *exc: object) -> None:
        self.stop_sync()

    async def __aenter__(self) -> Board:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- for tests and tools (any thread)

    def command(self, cmd: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Run one control command (the JSON-lines protocol's dict) and return its reply."""
        if self._loop is None or self._thread is None:
            raise BoardError("board not started")
        fut = asyncio.run_coroutine_threadsafe(self._command(cmd), self._loop)
        return fut.result(timeout)

    def control(self) -> BoardControl:
        return BoardControl(self.control_address)

    def transcript(self, start: int = 0) -> bytes:
        """Everything the board wrote to its serial port (connected or not) from byte `start`
        on; positions count from the first boot."""
        with self._lock:
            return bytes(self._transcript[max(0, start - self._transcript_base):])

    def transcript_end(self) -> int:
        with self._lock:
            return self._transcript_base + len(self._transcript)

    def wait_output(self, pattern: bytes, timeout: float = 10, start: int = 0) -> int:
        """Wait until the serial output from `start` on contains `pattern`; returns the
        position just after it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                rel = max(0, start - self._transcript_base)
                i = self._transcript.find(pattern, rel)
                if i >= 0:
                    return self._transcript_base + i + len(pattern)
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = bytes(self._transcript[-2000:])
                    raise TimeoutError(f"no {pattern!r} on the serial port; last output: {tail!r}")
                self._lock.wait(left)

    def wait_boot(self, n: int, timeout: float = BOOT_TIMEOUT_S) -> None:
        """Wait until boot number `n` (`boots` counts them from 1) has mounted its flash."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.boots < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = bytes(self._transcript[-2000:])
                    raise TimeoutError(f"board did not boot (#{n}); last output: {tail!r}; "
                                       f"last exit: {self.last_exit}")
                self._lock.wait(left)

    # -- loop thread: setup and teardown

    async def _setup(self) -> None:
        loop = asyncio.get_running_loop()
        self._bus_server = await asyncio.start_server(self._bus_client, "127.0.0.1", 0)
        self._bus_port = self._bus_server.sockets[0].getsockname()[1]
        self._control_server = await asyncio.start_server(self._control_client,
                                                          *self._control_bind)
        self.control_address = self._control_server.sockets[0].getsockname()[:2]
        self._check_client()
        loop.call_soon(self._spawn, PWRON_RESET, False)

    def _begin_stop(self) -> None:
        self._stopping = True
        if self._proc is not None and self._proc.poll() is None:
            self._kill(("stop", 0))
        else:
            assert self._loop is not None
            self._loop.stop()

    async def _teardown(self) -> None:
        loop = asyncio.get_running_loop()
        for w in self._boot_waiters:
            if not w.done():
                w.set_exception(BoardError("board stopped"))
        for server in (self._bus_server, self._control_server):
            if server is not None:
                server.close()
        # Connections still open (control clients, the bus): closing them ends their tasks.
        for w in list(self._conns):
            w.close()
        tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        if self._master >= 0:
            loop.remove_reader(self._master)
            loop.remove_writer(self._master)
        self._reap_now()

    def _reap_now(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    # -- loop thread: the serial port

    def _check_client(self) -> None:
        # POLLHUP on the master means no program has the slave open.
        assert self._loop is not None and self._slave_poll is not None
        if self._stopping or self._master < 0:
            return
        hup = any(ev & select.POLLHUP for _, ev in self._slave_poll.poll(0))
        if hup:
            if self._client:
                self._disconnected()
            self._recent.clear()
        elif not self._client:
            # Opened since the last look: what the board wrote meanwhile may have come after
            # the open, so the program gets it.
            self._client = True
            self._loop.add_reader(self._master, self._serial_readable)
            self._pending += self._recent
            self._recent.clear()
            self._flush_serial()
        self._loop.call_later(0.02, self._check_client)

    def _disconnected(self) -> None:
        assert self._loop is not None
        self._client = False
        self._loop.remove_reader(self._master)
        self._loop.remove_writer(self._master)
        self._writing = False
        self._pending.clear()
        # What the last program did not read is gone, as on a real port.
        with contextlib.suppress(OSError):
            termios.tcflush(self._master, termios.TCOFLUSH)

    def _serial_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: the last program closed the port
            self._disconnected()
            return
        if data:
            self._input(data)

    def _emit(self, data: bytes) -> None:
        """Serial output: recorded, mode-tracked, sent if a program has the port open."""
        if not data:
            return
        buf = self._tail + data
        r, f = buf.rfind(RAW_BANNER), buf.rfind(FRIENDLY_BANNER)
        if r >= 0 or f >= 0:
            self._raw = r > f
        self._tail = buf[-64:]
        now = time.monotonic()
        if now - self._activity >= 0.2:  # for the board's dupterm stand-in (machine.py)
            self._activity = now
            self._bus_send(b"A\n")
        with self._lock:
            self._transcript += data
            extra = len(self._transcript) - TRANSCRIPT_MAX
            if extra > 0:
                del self._transcript[:extra]
                self._transcript_base += extra
            self._lock.notify_all()
        if not self._client:
            self._recent += data
            del self._recent[:-PENDING_MAX]
            return
        self._pending += data
        if len(self._pending) > PENDING_MAX:
            del self._pending[: len(self._pending) - PENDING_MAX]
        self._flush_serial()

    def _flush_serial(self) -> None:
        assert self._loop is not None
        while self._pending:
            try:
                n = os.write(self._master, self._pending)
            except BlockingIOError:
                break
            except OSError:
                self._disconnected()
                return
            del self._pending[:n]
        if self._pending and not self._writing:
            self._writing = True
            self._loop.add_writer(self._master, self._flush_serial)
        elif not self._pending and self._writing:
            self._writing = False
            self._loop.remove_writer(self._master)

    # -- loop thread: input to the interpreter

    def _input(self, data: bytes) -> None:
        if self._hold:
            self._held += data
            del self._held[STDIN_MAX:]
            return
        start = 0
        while True:
            i = data.find(CTRL_C, start)
            if i < 0:
                self._child_write(data[start:])
                return
            self._child_write(data[start:i])
            self._ctrl_c()
            start = i + 1

    def _ctrl_c(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if _sigint_caught(proc.pid):
            now = time.monotonic()
            if now - self._last_sigint >= SIGINT_GAP_S:
                self._last_sigint = now
                os.kill(proc.pid, signal.SIGINT)
        else:
            self._child_write(b"\x03")

    def _release_input(self) -> None:
        self._hold = False
        held, self._held = bytes(self._held), bytearray()
        if held:
            self._input(held)

    def _child_write(self, data: bytes) -> None:
        proc = self._proc
        if not data or proc is None or proc.stdin is None:
            return
        self._stdin_buf += data
        if len(self._stdin_buf) > STDIN_MAX:
            del self._stdin_buf[STDIN_MAX:]
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        assert self._loop is not None
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        fd = proc.stdin.fileno()
        while self._stdin_buf:
            try:
                n = os.write(fd, self._stdin_buf)
            except BlockingIOError:
                break
            except OSError:  # the interpreter is gone
                self._stdin_buf.clear()
                break
            del self._stdin_buf[:n]
        if self._stdin_buf and not self._stdin_writing:
            self._stdin_writing = True
            self._loop.add_writer(fd, self._flush_stdin)
        elif not self._stdin_buf and self._stdin_writing:
            self._stdin_writing = False
            self._loop.remove_writer(fd)

    # -- loop thread: the interpreter's output and life

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
        heap = self.heap + HARNESS_HEAP + rom_heap(self.rom)
        args = [self._mp, "-X", f"heapsize={heap}", "-i", str(LAUNCHER),
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

    def _cook(self, data: bytes) -> bytes:
        # The ESP32's stdout turns every "\n" into "\r\n"; pyexec's own strings already
        # carry "\r\n".
        if not data:
            return data
        lead = b""
        if self._last_cr and data[:1] == b"\n":
            lead, data = b"\n", data[1:]
        self._last_cr = data.endswith(b"\r")
        return lead + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def _child_output(self, data: bytes) -> None:
        # Cooked, except what firmware wrote to sys.stdout.buffer (raw on the ESP32): it comes
        # framed by board_machine/rawsys.py, RAW_FRAME and 4 hex digits of length.
        buf, out = self._frame + data, bytearray()
        self._frame = b""
        i = 0
        while i < len(buf):
            if self._raw_left:
                chunk = buf[i:i + self._raw_left]
                out += chunk
                self._raw_left -= len(chunk)
                self._last_cr = False
                i += len(chunk)
                continue
            j = buf.find(RAW_FRAME, i)
            if j < 0:
                end = len(buf) - 1 if buf.endswith(RAW_FRAME[:1]) else len(buf)
                out += self._cook(buf[i:end])
                self._frame = buf[end:]  # a frame may start with that last byte
                break
            out += self._cook(buf[i:j])
            if len(buf) - j < RAW_HEAD:
                self._frame = buf[j:]
                break
            try:
                self._raw_left = int(buf[j + 2:j + RAW_HEAD], 16)
            except ValueError:  # not a frame after all
                out += self._cook(buf[j:j + 2])
            i = j + RAW_HEAD if self._raw_left else j + 2
        self._emit_cooked(bytes(out))

    def _emit_cooked(self, out: bytes) -> None:
        if self._swallow is not None:
            # A raw-REPL boot: hide the friendly banner until the raw REPL's own banner.
            self._swallow += out
            i = self._swallow.find(RAW_BANNER)
            if i < 0:
                if len(self._swallow) > 4096:
                    del self._swallow[:-len(RAW_BANNER)]
                return
            out, self._swallow = bytes(self._swallow[i:]), None
        self._emit(out)

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

    # -- loop thread: the bus to machine.py

    async def _bus_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            hello = (await reader.readline()).split()
            if len(hello) != 2 or hello[0] != b"H" or int(hello[1]) != self._boot_no:
                return  # a process that is already gone
            self._bus = writer
            writer.write(b"".join(b"L %d %d\n" % kv for kv in self._levels.items()) + b"K\n")
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
        elif k == b"F":
            self._feed_wdt()
        elif k == b"W":
            self._wdt_ms = int(f[1])
            self._feed_wdt()
        elif k == b"T":
            self._rtc_offset = int(f[1])
        elif k in (b"X", b"B", b"Z", b"D"):
            self._drain_child()
            self._kill({b"X": ("soft", SOFT_RESET), b"B": ("hard", HARD_RESET),
                        b"Z": ("hard", PWRON_RESET)}.get(k) or ("deepsleep", int(f[1])))

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

    # -- loop thread: control

    async def _control_client(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                try:
                    cmd = json.loads(line)
                    if not isinstance(cmd, dict):
                        raise ValueError("a command is a JSON object")
                    reply = await self._command(cmd)
                except Exception as e:  # noqa: BLE001 - every error becomes a reply
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

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

    async def _next_boot(self, timeout: float = BOOT_TIMEOUT_S) -> int:
        assert self._loop is not None
        fut: asyncio.Future[int] = self._loop.create_future()
        self._boot_waiters.append(fut)
        return await asyncio.wait_for(fut, timeout)

    async def _command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("cmd")
        handler: Callable[[dict[str, Any]], Any] | None = getattr(
            self, f"_cmd_{name}", None) if isinstance(name, str) else None
        if handler is None:
            raise ValueError(f"unknown command {name!r} (send {{\"cmd\": \"help\"}} for "
                             f"the commands)")
        result = handler(cmd)
        if asyncio.iscoroutine(result):
            result = await result
        return {"ok": True, **result}

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

    def _cmd_help(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """the commands, each with what it takes and does"""
        return {"commands": {n[5:]: (getattr(self, n).__doc__ or "").strip()
                             for n in sorted(dir(self)) if n.startswith("_cmd_")}}

    def _cmd_press(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """{"input": NAME or GPIO}: the pump-sense input goes active (a brew starts)"""
        return self._press(cmd, True)

    def _cmd_release(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """{"input": NAME or GPIO}: the input goes inactive"""
        return self._press(cmd, False)

    def _cmd_pulses(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """{"n": PULSES, "pin": "flow" or GPIO}: flow-meter pulses"""
        pin = self._pin(cmd.get("pin", "flow"))
        n = cmd.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("n must be a whole number of pulses >= 0")
        delivered = self._bus_send(b"P %d %d\n" % (pin, n))
        if delivered:
            self._pulse_totals[pin] = self._pulse_totals.get(pin, 0) + n
        else:  # the board is resetting: no counter runs, the pulses are lost
            self._pulses_lost += n
        return {"pin": pin, "n": n, "delivered": delivered}

    def _cmd_pins(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """input levels, outputs, pulse totals, the inputs by name, pulses_per_litre"""
        p = self.profile or {}
        active = self._active_level()
        inputs = {name: {"pin": int(pin), "pressed": self._levels.get(int(pin)) == active}
                  for name, pin in p.get("inputs", {}).items()}
        return {"levels": {str(k): v for k, v in sorted(self._levels.items())},
                "outputs": {str(k): v for k, v in sorted(self._outputs.items())},
                "pulses": {str(k): v for k, v in sorted(self._pulse_totals.items())},
                "pulses_lost": self._pulses_lost, "inputs": inputs,
                "pulses_per_litre": p.get("pulses_per_litre")}

    async def _cmd_power_cut(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """cut the power now and wait for the boot; {"after_ops": N, "tear": BOOL}: at the
        N-th flash operation from now instead"""
        after = cmd.get("after_ops")
        if after is not None:
            # Arm the flash: the after_ops-th program/erase from now fails, torn if asked.
            if isinstance(after, bool) or not isinstance(after, int) or after < 1:
                raise ValueError("after_ops counts flash operations from 1")
            tear = b"1" if cmd.get("tear") else b"0"
            if not self._bus_send(b"C %d %s\n" % (after, tear)):
                raise BoardError("the board is not running")
            return {"armed": after}
        return await self._hard(PWRON_RESET)

    async def _cmd_reset(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """a hard reset (the reset button); waits for the boot"""
        return await self._hard(HARD_RESET)

    async def _hard(self, cause: int) -> dict[str, Any]:
        waiter = self._next_boot()
        self._kill(("hard", cause))
        return {"boots": await waiter, "reset_cause": cause}

    async def _cmd_wait_boot(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """{"timeout": S}: wait for the next boot"""
        return {"boots": await self._next_boot(float(cmd.get("timeout", BOOT_TIMEOUT_S)))}

    def _cmd_wear(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """the flash's programs and erases so far"""
        # Counted by the supervisor from the board's reports, so they span resets and cuts.
        erases = self._block_erases
        return {"programs": self._programs, "bytes_programmed": self._bytes_programmed,
                "erases": sum(erases.values()), "max_block_erases": max(erases.values(),
                                                                        default=0),
                "blocks_erased": len(erases)}

    def _cmd_status(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """running or not, boots, reset cause, serial port, heap, image"""
        proc = self._proc
        alive = proc is not None and proc.poll() is None
        return {"state": "running" if alive and self._booted else "booting" if alive else "off",
                "pid": proc.pid if alive and proc else None, "boots": self.boots,
                "reset_cause": CAUSES[self._cause], "raw_repl": self._raw,
                "serial_port": self.serial_port, "client_connected": self._client,
                "heap": self.heap, "harness_heap": self.harness_heap, "rom_bytes": self.rom,
                "rom_heap": self.rom_heap,
                "image": str(self.image), "wdt_ms": self._wdt_ms,
                "last_exit": self.last_exit, "unique_id": self.unique_id.hex()}


class BoardControl:
    """Client of a board's control address (JSON lines). Methods raise BoardError when the
    board answers {"ok": false}."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 30) -> None:
        if isinstance(address, str):
            host, _, port = address.rpartition(":")
            address = (host or "127.0.0.1", int(port))
        self._sock = socket.create_connection(address, timeout=timeout)
        self._file = self._sock.makefile("rwb")

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self._file.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise BoardError("control connection closed")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise BoardError(reply.get("error", "failed"))
        return reply

    def press(self, input: str | int) -> dict[str, Any]:
        return self.call("press", input=input)

    def release(self, input: str | int) -> dict[str, Any]:
        return self.call("release", input=input)

    def pulses(self, n: int, pin: str | int = "flow") -> dict[str, Any]:
        return self.call("pulses", pin=pin, n=n)

    def pins(self) -> dict[str, Any]:
        return self.call("pins")

    def power_cut(self, after_ops: int | None = None, tear: bool = False) -> dict[str, Any]:
        if after_ops is None:
            return self.call("power_cut")
        return self.call("power_cut", after_ops=after_ops, tear=tear)

    def reset(self) -> dict[str, Any]:
        return self.call("reset")

    def wear(self) -> dict[str, Any]:
        return self.call("wear")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()

    def __enter__(self) -> BoardControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def emulate_main(argv: list[str] | None = None) -> int:
    """`brewmeter emulate`: run an emulated board until SIGINT/SIGTERM."""
    from brewmeter import Help

    ap = argparse.ArgumentParser(prog="brewmeter emulate", formatter_class=Help,
                                 description="run an emulated ESP32 on a pseudo-terminal")
    ap.add_argument("--board", default="emulator", help="profile name in boards/ or a path")
    ap.add_argument("--image", default="brewmeter-emulator.img",
                    help="flash image (2 MiB, created blank if missing)")
    ap.add_argument("--heap", help="MicroPython heap, e.g. 56K (default: the profile's)")
    ap.add_argument("--rom", type=parse_size, help="ROM partition size, e.g. 128K; 0: none "
                    "(default: the profile's rom_bytes, else 128K), kept in IMAGE.rom")
    ap.add_argument("--firmware", help="copy this firmware tree onto the flash first")
    ap.add_argument("--control-port", type=int, default=0, help="0 picks a free port")
    args = ap.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    try:
        board = Board(args.image, firmware_dir=args.firmware, board_profile=args.board,
                      heap=args.heap, control_port=args.control_port, rom=args.rom)
        board.start_sync()
    except (OSError, ValueError, TimeoutError, BoardError) as e:
        print(f"brewmeter emulate: {e}", file=sys.stderr)
        return 1
    host, port = board.control_address
    print(f"serial port: {board.serial_port}")
    print(f"control: {host}:{port}")
    print(f"(export BREWMETER_CONTROL={host}:{port} for ./brewmeter press, flow, power-cut)")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        board.stop_sync()
    return 0


__all__ = ["Board", "BoardControl", "BoardError", "emulate_main", "install"]
