"""A tech's `sync --pin` on the emulated board (MicroPython, at the emulator profile's
heap): the console lets go of its heap while the report runs and comes back on the next
byte, with what was being typed."""

from __future__ import annotations

import re
import time

import pytest
from brewmeter import fieldtech, ports
from brewmeter.emulator.board import Board
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.runs.demo import cloud_for
from test_resilience import test_profile

pytestmark = pytest.mark.board


def test_a_console_sync_frees_the_console_and_keeps_the_line_being_typed(tmp_path):
    prov = emulator_provision()
    prof = test_profile(tmp_path)
    with cloud_for(prov) as cloud, Board(tmp_path / "flash.img", board_profile=prof) as board:
        prov["cloud_url"] = cloud.url
        Flasher(board.serial_port).flash(str(prof), prov)
        ctl = board.control()
        fieldtech.ask(board.serial_port, "counters")  # the console loaded
        time.sleep(0.5)
        in_use = ctl.heap()
        with ports.open_port(board.serial_port, timeout=0.2) as s:
            # The sync's line, then the start of the next one, in one write.
            s.write(b"sync --pin %s\rcoun" % prov["service_pin"].encode())
            seen = b""
            end = time.monotonic() + 30
            while not re.search(rb"sync: (?!started)[^\r\n]*\r\n", seen):
                assert time.monotonic() < end, seen
                seen += s.read(512)
            assert b"sync: ok\r\n" in seen
            time.sleep(0.3)
            dropped = ctl.heap()  # nobody typed since: the console is not loaded
            s.write(b"ters\r")  # the rest of the line typed before the sync
            seen = b""
            end = time.monotonic() + 10
            while b"brewmeter> " not in seen:
                assert time.monotonic() < end, seen
                seen += s.read(512)
    # The console's and the service actions' module objects are freed (their names stay
    # interned); kept, the service actions would add about 2 KiB instead. What is freed
    # shrinks as the console does (2,016-2,600 bytes seen), so the line is drawn at 1 KiB.
    assert in_use - dropped > 1024, (in_use, dropped)
    assert b"brews_total" in seen and b"error" not in seen
