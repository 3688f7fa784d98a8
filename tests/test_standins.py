"""The two `machine` stand-ins (the CPython harness's, brewmeter/standins/machine.py, and the
emulated board's, esp32/machine.py, inside MicroPython) against the ESP32 port as
micropython-esp32-stubs describes it: every constant either defines has the stubs' name
and value, and both define the same ones."""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path

import pytest
from brewmeter import unixport
from brewmeter.standins import machine as harness_machine

CLASSES = ("Pin", "Counter", "Timer")


def stub_constants() -> dict[str, int]:
    """`NAME: Final[int] = v` at the top of machine.pyi and in its Pin, Counter, Timer."""
    pyi = Path(sysconfig.get_paths()["purelib"]) / "machine.pyi"
    if not pyi.exists():
        pytest.skip("micropython-esp32-stubs is not installed (the dev extra)")
    out: dict[str, int] = {}

    def take(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, int)):
                out[prefix + node.target.id] = node.value.value

    tree = ast.parse(pyi.read_text())
    take(tree.body, "")
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in CLASSES:
            take(node.body, node.name + ".")
    return out


def constants(module: object) -> dict[str, int]:
    out = {}
    for prefix, obj in [("", module)] + [(c + ".", getattr(module, c)) for c in CLASSES]:
        for name in dir(obj):
            v = getattr(obj, name)
            if name.isupper() and isinstance(v, int) and not isinstance(v, bool):
                out[prefix + name] = v
    return out


# The same walk, inside MicroPython, over the emulated board's machine module.
BOARD_DUMP = """
import json, machine
out = {}
for prefix, obj in [("", machine)] + [(c + ".", getattr(machine, c)) for c in CLASSES]:
    for name in dir(obj):
        v = getattr(obj, name)
        if name.isupper() and type(v) is int:
            out[prefix + name] = v
print(json.dumps(out))
"""


def board_constants() -> dict[str, int]:
    code = (f"import sys; sys.path.insert(0, {str(unixport.ONMICROPYTHON / 'esp32')!r})\n"
            f"CLASSES = {CLASSES!r}\n" + BOARD_DUMP)
    return json.loads(unixport.run(["-c", code]))


def test_the_stubs_say_what_the_firmware_relies_on():
    stubs = stub_constants()
    assert stubs["Pin.PULL_DOWN"] == 1 and stubs["Pin.PULL_UP"] == 2
    assert stubs["WDT_RESET"] == 3 and stubs["PWRON_RESET"] == 1


@pytest.mark.parametrize("which", ["harness", "board"])
def test_each_stand_ins_constants_are_the_esp32s(which):
    stubs = stub_constants()
    ours = constants(harness_machine) if which == "harness" else board_constants()
    for required in ("Pin.PULL_UP", "Pin.PULL_DOWN", "Pin.IN", "Pin.IRQ_RISING",
                     "Counter.RISING", "Timer.PERIODIC", "PWRON_RESET", "HARD_RESET",
                     "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET"):
        assert required in ours
    assert {k: v for k, v in ours.items() if k in stubs} == {
        k: stubs[k] for k in ours if k in stubs}
    assert sorted(k for k in ours if k not in stubs) == []  # no name the ESP32 lacks


def test_both_stand_ins_define_the_same_constants():
    assert constants(harness_machine) == board_constants()


def test_the_boards_reset_cause_names_are_machines():
    from brewmeter.emulator.common import CAUSES

    stubs = stub_constants()
    assert {stubs[name]: name for name in CAUSES.values()} == CAUSES


TIMER_DUMP = """
import time
fired = []
machine.Timer(1).init(mode=machine.Timer.ONE_SHOT, period=50, callback=lambda t: fired.append(1))
machine.Timer(1).deinit()  # another object, the same hardware timer: it stops
machine.Timer(-1).init(mode=machine.Timer.ONE_SHOT, period=50, callback=lambda t: fired.append(-1))
machine.Timer(-1).deinit()  # a virtual timer is its own: this one stops no other
time.sleep_ms(300)
print(fired)
"""


def test_a_new_timer_of_the_same_id_stops_the_one_armed_before():
    # As the ESP32 port's Timer(id): the object it keeps per hardware timer (romslot.passed()
    # stops the trial's timer this way, holding no timer object).
    code = (f"import sys; sys.path.insert(0, {str(unixport.ONMICROPYTHON / 'esp32')!r})\n"
            "import machine\n" + TIMER_DUMP)
    assert unixport.run(["-c", code]).strip() == "[-1]"  # the emulated board's
    harness_machine.Timer(1, mode=harness_machine.Timer.ONE_SHOT, callback=print)
    virtual = harness_machine.Timer(-1, mode=harness_machine.Timer.ONE_SHOT, callback=print)
    harness_machine.Timer(1).deinit()
    harness_machine.Timer(-1).deinit()
    assert harness_machine.timers() == [virtual]  # the harness's
    virtual.deinit()
