"""`brewmeter console` as a field tech meets it: the CLI in a real pseudo-terminal, the keys a
person presses (Ctrl-C, Ctrl-T C, Ctrl-], exit, quit), against the emulated board over its pty;
and an unplug mid-session."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest
from brewmeter import console_term, fieldtech
from brewmeter.emulator.board import Board
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision

pytestmark = [pytest.mark.board, pytest.mark.slow]


class Term:
    """`brewmeter console --port PORT` in a pseudo-terminal, typed at as a person would."""

    def __init__(self, port: str) -> None:
        self.master, slave = os.openpty()
        self.p = subprocess.Popen([sys.executable, "-m", "brewmeter.cli", "console", "--port",
                                   port], stdin=slave, stdout=slave, stderr=slave,
                                  start_new_session=True)
        os.close(slave)
        self.seen = b""

    def type(self, keys: bytes) -> None:
        for b in keys:  # a key at a time, as typed
            os.write(self.master, bytes([b]))
            time.sleep(0.01)

    def expect(self, what: bytes, timeout: float = 10.0) -> bytes:
        end = time.monotonic() + timeout
        while what not in self.seen and time.monotonic() < end:
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # the console has ended and its terminal with it
                    break
        assert what in self.seen, self.seen.decode(errors="replace")[-600:]
        return self.seen

    def ended(self, timeout: float = 10.0) -> int:
        rc = self.p.wait(timeout)
        try:
            while select.select([self.master], [], [], 0.2)[0]:
                data = os.read(self.master, 4096)
                if not data:
                    break
                self.seen += data
        except OSError:
            pass
        os.close(self.master)
        return rc


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    with Board(tmp_path_factory.mktemp("b") / "flash.img", board_profile="emulator") as b:
        Flasher(b.serial_port).flash("emulator", emulator_provision())  # unlocked
        yield b


def test_ctrl_c_stays_on_the_laptop_and_exit_leaves(board):
    t = Term(board.serial_port)
    t.expect(b"Ctrl-T then C sends one on purpose")
    t.type(b"\x03")
    t.expect(b"Ctrl-C not sent")
    t.type(b"counters\r")
    t.expect(b"brews_total")  # the app still answers: nothing reached the machine
    t.type(b"exit\r")
    assert t.ended() == 0
    assert b"Traceback" not in t.seen
    assert "brews_total" in fieldtech.ask(board.serial_port, "counters")  # the app runs on


def test_quit_and_ctrl_rbracket_leave_with_exit_0(board):
    for keys in (b"quit\r", b"\x1d"):
        t = Term(board.serial_port)
        t.expect(b"console on")
        t.type(keys)
        assert t.ended() == 0, t.seen
        assert b"console: left" in t.seen
    # `exit` and `quit` never reached the machine as commands (no error for them).
    assert b"unknown command" not in t.seen


def test_ctrl_t_c_sends_ctrl_c_and_the_console_says_the_repl_answers(board):
    t = Term(board.serial_port)
    t.expect(b"console on")
    t.type(b"\x14c")
    t.expect(b"Ctrl-C sent")
    t.expect(b"the MicroPython REPL answers (>>>), not the app")
    t.expect(b"brewmeter restart")
    t.type(b"\x1d")
    assert t.ended() == 0
    t = Term(board.serial_port)  # still the REPL: said on entry
    t.expect(b"the MicroPython REPL answers (>>>), not the app")
    t.type(b"quit\r")
    assert t.ended() == 0
    assert fieldtech.restart(board.serial_port)  # the app back, as the console said
    t = Term(board.serial_port)  # back in the app: the console says nothing of a REPL
    t.expect(b"console on")
    t.type(b"status\r")
    t.expect(b"device_id")
    t.type(b"exit\r")
    assert t.ended() == 0
    assert b"REPL" not in t.seen.split(b"Ctrl-T then C", 1)[1]


def test_an_unplug_ends_the_session_with_one_line_and_exit_1(tmp_path):
    b = Board(tmp_path / "flash.img", board_profile="emulator")
    with b:
        Flasher(b.serial_port).flash("emulator", emulator_provision())
        t = Term(b.serial_port)
        t.expect(b"console on")
        t.type(b"counters\r")
        t.expect(b"brews_total")
    # The board is gone (its pty closed): the cable pulled.
    assert t.ended() == 1
    assert console_term.GONE.encode() in t.seen
    assert b"Traceback" not in t.seen and b"Exception" not in t.seen


def test_keys_alone():
    k = console_term.Keys()
    assert k.feed(b"stat\x7fus\r") == (b"stat\x7fus\r", [], False)
    assert k.feed(b"\x03") == (b"", [console_term.NOT_SENT], False)
    assert k.feed(b"\x14C") == (b"\x03", ["(Ctrl-C sent)"], False)
    assert k.feed(b"\x14x")[1] == [console_term.MENU]
    assert k.feed(b"  exit ") == (b"  exit ", [], False)
    assert k.feed(b"\r") == (b"\x7f" * 7, [], True)
    assert k.feed(b"exits\r")[2] is False
    s = console_term.Screen()
    assert s.feed(b"brewmeter> ") == []
    assert s.feed(b"\r\n>>> ") == [console_term.REPL]
    assert s.feed(b">>> ") == []  # said once
