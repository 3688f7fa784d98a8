"""What every part of the emulated board shares: the ESP32's figures it keeps (heap, ROM,
reset causes, the REPL's banners), its errors, board profiles, and the checks on the
interpreter process it runs."""

from __future__ import annotations

import ctypes
import json
import signal
from pathlib import Path
from typing import Any

from brewmeter.onmicropython.esp32 import machineconsts
from brewmeter.profiles import board_path

LAUNCHER = Path(__file__).resolve().parents[1] / "onmicropython" / "board_launch.py"

CAUSES = dict(enumerate(machineconsts.CAUSES, 1))  # reset cause -> its name in `machine`
SOFT_REBOOT = b"MPY: soft reboot\r\n"  # ports/esp32/main.c, soft_reset_exit
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"  # shared/runtime/pyexec.c
FRIENDLY_BANNER = b'Type "help()" for more information.\r\n'  # pyexec.c, friendly REPL
DEFAULT_HEAP = 56 * 1024
# The ROM partition's size when the profile gives none: the "romfs" partition of MicroPython's
# ports/esp32/partitions-4MiB-romfs.csv. On the unix port its bytes sit in one heap buffer
# (on a chip: memory-mapped flash); the board adds that buffer, with the GC's tables for it,
# to -X heapsize, so the firmware's `heap` and every heap figure leave the ROM out.
DEFAULT_ROM = 128 * 1024
ROM_BLOCK = 4096

CTRL_C = 0x03
# A raw write to sys.stdout.buffer on the board (esp32/rawsys.py): RAW_FRAME, its
# length in 4 hex digits, then the bytes, passed on uncooked.
RAW_FRAME = b"\x00\x1b"
RAW_HEAD = len(RAW_FRAME) + 4
# A second SIGINT that lands before the first is handled makes the unix port exit(1): one
# per process per SIGINT_GAP_S.
SIGINT_GAP_S = 0.1
# A Ctrl-C the board has not raised by then (its code reads no pin: the REPL's own, say)
# comes as SIGINT, which can land anywhere, a garbage collection included.
INTR_FALLBACK_S = 0.25
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


def read_profile(name_or_path: str) -> tuple[dict[str, Any], str]:
    """A board profile (boards/NAME.json or a path) as the board reads it, unchecked (the
    firmware checks it at boot): its data and its text."""
    text = board_path(name_or_path).read_text()
    return json.loads(text), text


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    # In the child before exec: SIGKILL when the supervisor's thread goes, however it goes.
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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
