"""Nothing stops the counting, on the emulated board: a console fuzz that knows the grammar,
with a brew counted after every line."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from brewmeter import fieldtech, ports
from brewmeter.emulator.board import Board
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.profiles import BOARDS
from brewmeter.runs import consolefuzz

# Short brews (min_brew_s 1) so a test can brew after every step.
FAST = {"min_brew_s": 1, "max_run_s": 10}


@pytest.mark.board
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


@pytest.mark.slow
@pytest.mark.board
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

    from brewmeter.unixport import tool

    subprocess.run([tool("mpremote"), "connect", board.serial_port, "exec",
                    f"open('/hook', 'w').write({word!r})"], check=True, capture_output=True,
                   timeout=60)
    Flasher(board.serial_port).restart()


@pytest.mark.slow
@pytest.mark.board
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


# The REPL watch and the watchdog, with short waits: back from the REPL after 5 s of quiet,
# a watchdog of 3 s.
IDLE_S, WDT_S = 5, 3


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quick")
    prof = test_profile(tmp, repl_idle_s=IDLE_S, wdt_s=WDT_S)
    with Board(tmp / "flash.img", board_profile=prof) as board:
        Flasher(board.serial_port).flash(str(prof), emulator_provision())
        yield board


def _mpremote(board: Board, *args: str, timeout: float = 60) -> str:
    import subprocess

    from brewmeter.unixport import tool

    p = subprocess.run([tool("mpremote"), "connect", board.serial_port, *args],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _counting_again(board: Board, within: float) -> float:
    """Seconds until the app is back, watched from the control address only: a probe on
    the serial port would be activity that keeps the REPL (rightly) from timing out."""
    t0 = time.monotonic()
    start = board.transcript_end()
    board.wait_boot(board.boots + 1, timeout=within)
    board.wait_output(b"brewmeter ready", timeout=within, start=start)
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.board
def test_left_at_the_repl_by_mpremote_it_comes_back_by_itself(quick):
    board = quick
    n = brews(board)
    assert _mpremote(board, "exec", "print(6 * 7)").strip() == "42"
    with pytest.raises(fieldtech.NoBrewmeter, match="REPL answers.*brewmeter restart"):
        fieldtech.ask(board.serial_port, "counters", timeout=1)
    _counting_again(board, IDLE_S + 10)
    faults = fieldtech.ask(board.serial_port, "faults")
    assert any(f.startswith("app_stopped ") and "s at the REPL" in f for f in faults), faults
    brew(board)
    assert brews(board) == n + 1


@pytest.mark.slow
@pytest.mark.board
def test_a_busy_mpremote_session_longer_than_repl_idle_s_is_not_cut(quick):
    board = quick
    boots = board.boots
    # One session of about 3 x IDLE_S: a command every 1.5 s, each answering.
    args: list[str] = []
    for i in range(10):
        args += ["exec", f"import time; time.sleep(1.5); print('step', {i})", "+"]
    out = _mpremote(board, *args[:-1], timeout=120)
    assert out.split() == [w for i in range(10) for w in ("step", str(i))]
    assert board.boots == boots + 1  # only mpremote's own soft reset into the raw REPL
    assert fieldtech.restart(board.serial_port).startswith("brewmeter ready")
    assert "brews_total" in fieldtech.ask(board.serial_port, "counters")


@pytest.mark.board
def test_brewmeter_restart_brings_the_app_back_at_once(quick, capsys):
    from brewmeter import cli

    board = quick
    _mpremote(board, "exec", "pass")
    t0 = time.monotonic()
    assert cli.main(["restart", "--port", board.serial_port]) == 0
    assert "brewmeter ready" in capsys.readouterr().out
    assert time.monotonic() - t0 < IDLE_S
    assert "brews_total" in fieldtech.ask(board.serial_port, "counters")


@pytest.mark.slow
@pytest.mark.board
def test_a_stalled_loop_is_reset_by_the_watchdog_and_the_counts_kept(quick):
    board = quick
    brew(board)
    before = fieldtech.ask(board.serial_port, "counters")
    boots = board.boots
    _hook(board, "stall")  # the event loop blocks a second after the app starts
    start = board.transcript_end()
    board.wait_boot(boots + 3, timeout=WDT_S + 15)  # mpremote's reset, restart, watchdog
    assert board.command({"cmd": "status"})["reset_cause"] == "WDT_RESET"
    board.wait_output(b"brewmeter ready", timeout=10, start=start)
    after = fieldtech.ask(board.serial_port, "counters")
    assert after["brews"] == before["brews"] and after["boots"] == before["boots"] + 2
    assert "watchdog_reset " in fieldtech.ask(board.serial_port, "faults")
    status = fieldtech.ask(board.serial_port, "status")
    assert status["reset_cause"] == "watchdog"
    brew(board)
    assert brews(board) == before["brews"]["espresso"] + 1


@pytest.mark.board
def test_an_error_in_the_counting_resets_the_machine_never_the_repl(quick):
    board = quick
    brew(board)
    before = fieldtech.ask(board.serial_port, "counters")
    boots = board.boots
    _hook(board, "fail:counting")
    start = board.transcript_end()
    board.wait_boot(boots + 3, timeout=15)  # mpremote's reset, restart, the app's reset
    board.wait_output(b"brewmeter ready", timeout=10, start=start)
    assert b"test hook: counting made to fail" in board.transcript(start)
    assert board.command({"cmd": "status"})["reset_cause"] == "HARD_RESET"
    after = fieldtech.ask(board.serial_port, "counters")
    assert after["brews"] == before["brews"] and after["boots"] == before["boots"] + 2
