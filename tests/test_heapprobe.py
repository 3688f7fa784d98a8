"""The emulated board's `heap` control command: the heap the running app holds (collected),
the harness's share and the ROM's buffer left out; brewmeter bench's console_heap_bytes and
sync_heap_bytes are read with it."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.board

# Holds nothing until GPIO 1 goes high, then 20,000 bytes; garbage made on the way is not held.
MAIN_PY = """\
import machine, time
print("ready")
btn = machine.Pin(1, machine.Pin.IN)
held = None
while True:
    junk = bytearray(3000)  # garbage each round: a collected figure leaves it out
    if btn.value() and held is None:
        held = bytearray(20000)
        print("held")
    time.sleep_ms(10)
"""


@pytest.fixture
def board(main_py_board):
    with main_py_board(MAIN_PY) as b:
        b.wait_output(b"ready")
        yield b


def test_heap_counts_what_the_app_holds_and_not_its_garbage(board):
    ctl = board.control()
    before = ctl.heap()
    assert 0 < before < board.heap  # the harness's share and the ROM's buffer are not in it
    ctl.press(1)
    board.wait_output(b"held", timeout=10)
    after = ctl.heap()
    assert 20000 <= after - before < 20000 + 512
    assert abs(ctl.heap() - after) < 512  # the 3,000 bytes of garbage per round never count


def test_the_code_figure_loads_every_module_within_the_boards_heap():
    """bench's app_code_heap_bytes: every firmware module imported from the ROM; what they
    hold fits the emulator profile's heap with room for data, and the qstr pools they grew
    hold at least every module's own name."""
    from brewmeter.bench.boot_heap import app_code_heap_bytes
    from brewmeter.emulator.common import read_profile
    from brewmeter.unixport import FIRMWARE

    got = app_code_heap_bytes()
    names = [p.stem for p in (FIRMWARE / "app").glob("*.py")]
    assert sum(len(n) for n in names) < got["app_qstr_heap_bytes"] < got["app_code_heap_bytes"]
    assert got["app_code_heap_bytes"] < 0.8 * read_profile("emulator")[0]["heap_bytes"]
