"""The emulated board itself (`Board`): its state, start and stop, and `brewmeter emulate`.
The parts it is made of are described in this package's docstring (emulator/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import hashlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
import tty
import weakref
from pathlib import Path
from typing import Any

from brewmeter.emulator.bus import Bus
from brewmeter.emulator.common import (
    BOOT_TIMEOUT_S,
    DEFAULT_HEAP,
    DEFAULT_ROM,
    ROM_BLOCK,
    BoardError,
    parse_size,
    read_profile,
)
from brewmeter.emulator.control import BoardControl, Control
from brewmeter.emulator.lfs import install
from brewmeter.emulator.process import Supervisor, heap_reserve
from brewmeter.emulator.serialport import Serial
from brewmeter.onmicropython.esp32.machineconsts import PWRON_RESET
from brewmeter.unixport import InterpreterError, interpreter

_live: weakref.WeakSet[Board] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # A board the program forgot to stop must not outlive it (main.py never reads stdin EOF).
    for b in list(_live):
        b.stop_sync()


class Board(Serial, Supervisor, Bus, Control):
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
            self.profile, self._profile_text = read_profile(str(board_profile))
        profile_heap = self.profile.get("heap_bytes") if self.profile else None
        self.heap = parse_size(heap) or profile_heap or DEFAULT_HEAP
        # The ROM partition: its bytes in IMAGE.rom, beside the vfs partition's image.
        if rom is None:
            rom = self.profile.get("rom_bytes", DEFAULT_ROM) if self.profile else DEFAULT_ROM
        if rom % ROM_BLOCK:
            raise ValueError(f"a ROM partition is whole {ROM_BLOCK}-byte blocks, not {rom}")
        self.rom = rom
        self.rom_image = self.image.with_name(self.image.name + ".rom")
        # The update's slots, each the ROM's size (esp32.Partition "romfs_new", "romfs_old").
        self.slot_images = {label: self.image.with_name(f"{self.image.name}.{label}")
                            for label in ("romfs_new", "romfs_old")}
        self.unique_id = unique_id or (
            b"\x24\x0a\xc4" + hashlib.sha256(str(self.image).encode()).digest()[:3])
        self.interpreter = interpreter(micropython)  # $BREWMETER_MICROPYTHON or the wheel's
        self._mp = str(self.interpreter["path"])
        self.heapsize = 0  # -X heapsize: `heap` and what the harness and the ROM take, measured
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
        self._intr_pending: subprocess.Popen[bytes] | None = None  # a Ctrl-C sent on the bus
        self._boot_timer: asyncio.TimerHandle | None = None
        self._boot_waiters: list[asyncio.Future[int]] = []
        self._heap_waiters: list[asyncio.Future[int]] = []
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
        self.heapsize = self.heap + heap_reserve(self._mp, self.rom)["reserve"]
        if self.firmware_dir is not None:
            install(self.image, self.firmware_dir, self._profile_text)
        for part in (self.rom_image, *self.slot_images.values()) if self.rom else ():
            if not part.exists() or part.stat().st_size != self.rom:
                part.write_bytes(b"\xff" * self.rom)  # a new partition table: erased
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

    def command(self, cmd: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Run one control command (the JSON-lines protocol's dict) and return its reply."""
        if self._loop is None or self._thread is None:
            raise BoardError("board not started")
        fut = asyncio.run_coroutine_threadsafe(self._command(cmd), self._loop)
        return fut.result(timeout)

    def control(self) -> BoardControl:
        return BoardControl(self.control_address)

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
    except (OSError, ValueError, TimeoutError, BoardError, InterpreterError) as e:
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
