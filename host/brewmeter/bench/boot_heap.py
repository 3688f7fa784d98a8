"""Benchmarks on the emulated board: boot_to_ready_ms and app_peak_heap_bytes."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from brewmeter.cloud.server import Faults
from brewmeter.emulator.board import Board
from brewmeter.emulator.common import DEFAULT_ROM, read_profile
from brewmeter.emulator.lfs import install
from brewmeter.flasher import READY
from brewmeter.flashfiles import build, build_rom, emulator_provision
from brewmeter.runs.demo import cloud_for
from brewmeter.standins import FIRMWARE


def _image(d: Path, prov: dict | None, rom: bool = True, main: str | None = None) -> Path:
    """A flash image holding the compiled firmware, as flash.sh leaves a board: with `rom`
    (the emulated board has a ROM partition) the app as a ROMFS image in it (IMAGE.rom, the
    emulator profile's size) and only boot.py, main.py and the JSON files on the filesystem;
    else the app on the filesystem, as on stock firmware. `main`: another main.py's source."""
    tree = d / "tree"
    tree.mkdir()
    files = build(tree, "emulator", prov)
    if main is not None:
        (tree / "main.py").write_text(main)
    image = d / "flash.img"
    if rom:
        romfs = build_rom(d, files).read_bytes()
        size = read_profile("emulator")[0].get("rom_bytes", DEFAULT_ROM)
        (d / "flash.img.rom").write_bytes(romfs + b"\xff" * (size - len(romfs)))
        shutil.rmtree(tree / "app")
    install(image, tree)
    return image


def boot_to_ready_ms(runs: int = 5) -> dict[str, float]:
    """From the interpreter process's start (a hard reset through the control address) to
    the firmware's ready line on the serial port; the median of `runs`. Sync is on but its
    cloud is down: the app must not wait for it."""
    with tempfile.TemporaryDirectory() as d:
        image = _image(Path(d), emulator_provision("http://127.0.0.1:9"))
        with Board(image, board_profile="emulator") as board:
            board.wait_output(READY, timeout=30)
            times = []
            for _ in range(runs):
                start = board.transcript_end()
                t0 = time.monotonic()
                board.control().reset()
                board.wait_output(READY, timeout=30, start=start)
                times.append((time.monotonic() - t0) * 1000)
    return {"boot_to_ready_ms": round(statistics.median(times), 1)}


# The configuration the largest reply carries (applied once, then the same version again).
CONFIG = {"report_delay_s": 7200, "sync_interval_s": 86400}
CONSOLE_READS = ("counters", "status", "filter", "consumables", "events", "config")


def _smallest(fits: Callable[[int], bool], lo: int = 32 * 1024, hi: int = 192 * 1024,
              step: int = 4096, runs: int = 3) -> tuple[int, list[int]]:
    """The smallest heap (to `step` bytes) for which `fits(heap)` holds `runs` times in a row
    while the step below fails at least once, found by bisection, then confirmed; and the
    band [the smallest heap seen to hold at least once, that heap]. The threshold is not
    sharp (when the collector runs moves with the I/O's timing), so a size tried once can
    land on either side of it."""
    tried: dict[int, list[bool]] = {}

    def attempt(size: int) -> bool:
        ok = fits(size)
        tried.setdefault(size, []).append(ok)
        return ok

    def steady(size: int) -> bool:
        # `runs` passes in a row, those it already had at the end counted.
        had = tried.get(size, [])
        n = 0
        while n < len(had) and had[-1 - n]:
            n += 1
        while n < runs:
            if not attempt(size):
                return False
            n += 1
        return True

    floor, ceiling = lo, hi
    if not attempt(hi):
        raise RuntimeError(f"the workload does not run even in {hi} bytes")
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    size = hi
    while not steady(size):
        size += step
        if size > ceiling:
            raise RuntimeError(f"no heap up to {ceiling} bytes runs the workload {runs} times "
                               "in a row")
    while size - step >= floor and False not in tried.get(size - step, []) \
            and steady(size - step):
        size -= step
    return size, [min(s for s, oks in tried.items() if any(oks)), size]


class _LargestReply(Faults):
    """The cloud stores each report, then replies 200 with a reply of the largest size the
    protocol allows (MAX_REPLY bytes): every event id the outbox can hold acknowledged (none
    of them sent, so the device keeps its events), a configuration, padded with JSON
    whitespace."""

    def draw(self, device_id: str, seq: str | None) -> str | None:
        return "garbage"

    def garbage(self) -> bytes:
        from app.outbox import MAX_EVENTS
        from app.protocol import MAX_REPLY

        from brewmeter import profiles  # noqa: F401 - the firmware's modules, importable

        body = json.dumps({"ack": list(range(10**6, 10**6 + MAX_EVENTS)), "orders": {},
                           "refill": {}, "config": {"version": 1, "settings": CONFIG}
                           }).encode()
        return body + b" " * (MAX_REPLY - len(body))


def _peak_fits(heap: int, rom: bool) -> bool:
    """The app's worst moment: boot with `heap`, the service console in use (every read
    command, soon after boot: the boot's report over TLS may be running meanwhile),
    a brew of each kind, then a tech's `sync --pin` on the console (its PIN checked by the
    service actions; the console is dropped while that report runs): a report over TLS
    that receives a reply of the largest size the protocol allows. Fits when the console
    says the sync went through ("sync: ok": the reply was taken), the cloud has the brews,
    and nothing raised MemoryError."""
    from brewmeter import fieldtech, ports

    with tempfile.TemporaryDirectory() as d:
        prov = emulator_provision()
        with cloud_for(prov, tls=True, faults=_LargestReply()) as cloud:
            image = _image(Path(d), prov, rom)
            with Board(image, board_profile="emulator", heap=heap,
                       rom=None if rom else 0) as board:
                try:
                    board.wait_output(READY, timeout=30)
                    for cmd in CONSOLE_READS:
                        fieldtech.ask(board.serial_port, cmd, timeout=5)
                except (TimeoutError, OSError, fieldtech.NoBrewmeter):
                    return False
                ctl = board.control()
                kinds = sorted(board.profile["inputs"]) if board.profile else []
                for k in kinds:
                    ctl.press(k)
                for _ in range(9):
                    ctl.pulses(150)
                    time.sleep(1)
                for k in kinds:
                    ctl.release(k)
                time.sleep(0.5)
                start = board.transcript_end()
                with ports.open_port(board.serial_port, timeout=0.05) as s:
                    s.write(b"\rsync --pin %s\r" % prov["service_pin"].encode())
                    try:  # "sync: started", then the result
                        end = board.wait_output(b"sync: started", timeout=30, start=start)
                        end = board.wait_output(b"sync: ", timeout=30, start=end)
                        board.wait_output(b"\r\n", timeout=30, start=end)
                    except TimeoutError:
                        return False
                said = board.transcript(end)[:40]
                got = cloud.ledger.device(prov["device_id"])["counters"]
                return (said.startswith(b"ok\r\n") and got.get("brews_total") == len(kinds)
                        and b"MemoryError" not in board.transcript())


def app_peak_heap_bytes() -> dict[str, float]:
    """The smallest heap the firmware runs its worst moment in on the emulated board
    (_peak_fits: a tech's `sync --pin` on the console: a TLS report receiving the largest
    reply, the console in use meanwhile), with
    the app deployed to ROMFS as flash.sh does when the firmware has a ROM partition (its
    bytes are flash, not heap: the board leaves them out), and with the filesystem
    deployment stock firmware gets. The board adds its own harness's heap on top, measured
    on the interpreter in use (brewmeter.emulator.process.heap_reserve), so these are
    the app's. Each with its band (_smallest): from the smallest heap seen to run it once to
    the figure, which ran it three times in a row."""
    rom, rom_band = _smallest(lambda h: _peak_fits(h, True))
    fs, fs_band = _smallest(lambda h: _peak_fits(h, False))
    return {"app_peak_heap_bytes": rom, "app_peak_heap_bytes_band": rom_band,
            "app_peak_heap_fs_bytes": fs, "app_peak_heap_fs_bytes_band": fs_band}


def _held(prov: dict | None, until: Callable[[Board], bool], settle: float = 1.0) -> int:
    """The heap the app holds (gc.mem_alloc() after gc.collect(), the harness's share and
    the ROM's buffer left out: the board's `heap` command) on a board with provisioning
    `prov` at its default heap, once `until(board)` holds and `settle` seconds more."""
    with tempfile.TemporaryDirectory() as d:
        image = _image(Path(d), prov)
        with Board(image, board_profile="emulator") as board:
            board.wait_output(READY, timeout=30)
            end = time.monotonic() + 30
            while not until(board):
                if time.monotonic() > end:
                    raise RuntimeError("the board never got there")
                time.sleep(0.2)
            time.sleep(settle)
            return board.control().heap()


def sync_heap_bytes() -> dict[str, float]:
    """Heap the sync holds on the emulated board: what a provisioned app holds after its
    first report over TLS went through (the sync stack's modules, its 4 KiB reply buffer,
    the TLS context, the Syncer and what it keeps), less what an unprovisioned one holds.
    Measured inside the running app (gc.collect(), then gc.mem_alloc()), not by bisection:
    the sync stack and its buffer are set up at boot, so a bisection against an idle
    provisioned board read 0."""
    prov = emulator_provision()
    with cloud_for(prov, tls=True) as cloud:
        synced = _held(prov, lambda b: bool(cloud.ledger.device(prov["device_id"])["reports"]))
    bare = _held(None, lambda b: True, settle=3.0)
    return {"sync_heap_bytes": synced - bare}


# Imports every firmware module (from the ROM, as the app does) and says what that held,
# with the qstr pools before and after (micropython.qstr_info's line). boot.py has loaded
# the REPL watch: dropped first, as the app does, so its objects are counted too.
_IMPORT_ALL = """import gc, micropython, sys
w = sys.modules.get("app.replwatch")
if w:
    w.disarm()
w = None
sys.modules.pop("app.replwatch", None)
sys.modules.pop("app", None)
gc.collect()
a = gc.mem_alloc()
micropython.qstr_info()
for m in %r:
    __import__(m)
gc.collect()
print("IMPORTED", gc.mem_alloc() - a)
micropython.qstr_info()
"""


def app_code_heap_bytes() -> dict[str, float]:
    """What loading the firmware's code costs the heap with the app in ROMFS, before it
    holds any data: every module under app/ imported by a main.py of its own (console and
    service included), collected; and of that, the qstr pools the imports grew (the table of
    names and short strings, kept for good: unloading a module does not give them back; the
    text stays in the ROM). The floor under app_peak_heap_bytes."""
    with tempfile.TemporaryDirectory() as d:
        mods = sorted("app." + p.stem for p in (FIRMWARE / "app").glob("*.py")
                      if p.stem != "__init__")
        image = _image(Path(d), None, main=_IMPORT_ALL % mods)
        with Board(image, board_profile="emulator", heap=192 * 1024) as board:
            end = board.wait_output(b"IMPORTED", timeout=60)
            end = board.wait_output(b"n_total_bytes=", timeout=10, start=end)
            board.wait_output(b"\n", timeout=10, start=end)
            out = board.transcript().decode(errors="replace")
    # qstr_info's n_total_bytes adds the names' text to the pools' own bytes: a name loaded
    # from the ROM keeps its text there (qstr_from_strn_static), so only the pools count.
    pools = [int(t) - int(s) for s, t in
             re.findall(r"n_str_data_bytes=(\d+), n_total_bytes=(\d+)", out)]
    code = re.search(r"IMPORTED (\d+)", out)
    if len(pools) < 2 or code is None:
        raise RuntimeError(f"the import probe said: {out[-400:]!r}")
    return {"app_code_heap_bytes": int(code[1]), "app_qstr_heap_bytes": pools[-1] - pools[0]}


def console_roundtrip_ms(runs: int = 10) -> dict[str, float]:
    """`brewmeter counters --json` from the laptop side (open the pty, send, parse the
    reply) against the emulated board: the median of `runs`, after a first call that loads
    the console."""
    from brewmeter import fieldtech

    with tempfile.TemporaryDirectory() as d:
        image = _image(Path(d), emulator_provision("http://127.0.0.1:9"))
        with Board(image, board_profile="emulator") as board:
            board.wait_output(READY, timeout=30)
            fieldtech.ask(board.serial_port, "counters")
            times = []
            for _ in range(runs):
                t0 = time.monotonic()
                fieldtech.ask(board.serial_port, "counters")
                times.append((time.monotonic() - t0) * 1000)
    return {"console_roundtrip_ms": round(statistics.median(times), 1)}


def console_heap_bytes() -> dict[str, float]:
    """Heap the service console holds while in use on the emulated board: what the running
    app holds (gc.collect(), then gc.mem_alloc(), inside it) after every read command, less
    what the same board held before anyone typed (the console loads on the first byte)."""
    from brewmeter import fieldtech

    with tempfile.TemporaryDirectory() as d:
        image = _image(Path(d), None)
        with Board(image, board_profile="emulator") as board:
            board.wait_output(READY, timeout=30)
            time.sleep(2)
            ctl = board.control()
            idle = ctl.heap()
            for cmd in CONSOLE_READS:
                fieldtech.ask(board.serial_port, cmd, timeout=5)
            return {"console_heap_bytes": ctl.heap() - idle}
