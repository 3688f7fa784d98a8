"""Nothing stops the counting, on the emulated board: a console fuzz that knows the grammar,
with a brew counted after every line."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from brewmeter import consolefuzz, fieldtech, ports
from brewmeter.board import Board
from brewmeter.flasher import Flasher, emulator_provision
from brewmeter.harness import BOARDS

# Short brews (min_brew_s 1) so a test can brew after every step.
FAST = {"min_brew_s": 1, "max_run_s": 10}


def test_profile(tmp_path: Path, **fields: object) -> Path:
    data = json.loads((BOARDS / "emulator.json").read_text())
    data.update(FAST, **fields)
    p = tmp_path / "emulator-test.json"
    p.write_text(json.dumps(data))
    return p


test_profile.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def brew(board: Board, kind: str = "espresso", seconds: float = 1.2) -> None:
    ctl = board.control()
    try:
        ctl.press(kind)
        time.sleep(seconds)
        ctl.release(kind)
        time.sleep(0.2)  # the release's debounce, then the brew is counted and saved
    finally:
        ctl.close()


def brews(board: Board, kind: str = "espresso", timeout: float = 5) -> int:
    return fieldtech.ask(board.serial_port, "counters", timeout=timeout)["brews"][kind]


def test_console_core_fuzz_never_raises():
    """Under CPython, thousands of mutated lines: each answered, none caught as a crash."""
    assert consolefuzz.fuzz_core(5000, seed=3) == []


def test_console_fuzz_on_the_board_a_brew_counts_after_every_line(tmp_path):
    prof = test_profile(tmp_path)
    with Board(tmp_path / "flash.img", board_profile=prof) as board:
        Flasher(board.serial_port).flash(str(prof), emulator_provision())
        start = board.transcript_end()
        n = brews(board)
        rng = random.Random(5)
        lines = consolefuzz.inputs(seed=11, n=24)
        ctl = board.control()
        for data in lines:
            ctl.press("espresso")
            with ports.open_port(board.serial_port) as s:
                s.write(data)
                time.sleep(1.1 + rng.random() * 0.1)
            ctl.release("espresso")
            time.sleep(0.1)
            got = brews(board)
            assert got == n + 1, f"after {data!r}: {got} brews, expected {n + 1}"
            n = got
        ctl.close()
        assert b"Traceback" not in board.transcript(start)


def _hook(board: Board, word: str) -> None:
    """A test's request for the next boot (app/supervisor.py take_hook), then that boot."""
    import subprocess

    from brewmeter.mp import tool

    subprocess.run([tool("mpremote"), "connect", board.serial_port, "exec",
                    f"open('/hook', 'w').write({word!r})"], check=True, capture_output=True,
                   timeout=60)
    Flasher(board.serial_port).restart()


def test_a_failing_task_is_restarted_with_a_fault_and_the_counting_goes_on(tmp_path):
    prof = test_profile(tmp_path)
    with Board(tmp_path / "flash.img", board_profile=prof) as board:
        Flasher(board.serial_port).flash(str(prof), emulator_provision())
        n = brews(board)
        _hook(board, "fail:console")
        brew(board)  # while the console is down and waiting to restart
        time.sleep(1.5)
        assert brews(board) == n + 1
        faults = fieldtech.ask(board.serial_port, "faults")
        assert any(f.startswith("task_failed console RuntimeError: test hook") for f in faults)
        events = fieldtech.ask(board.serial_port, "events")
        assert any(e.get("code") == "task_failed" for e in events)  # for the cloud
