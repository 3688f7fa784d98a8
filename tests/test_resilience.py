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
