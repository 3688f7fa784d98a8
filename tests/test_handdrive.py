"""An emulated board driven by hand, as a developer does: `brewmeter emulate` running, then
`brewmeter press`, `flow` and `power-cut` as subprocesses, the counts read back over the
serial port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from brewmeter.emulator.control import BoardControl
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.runs.demo import read_counters

KINDS = ["espresso", "hot_water", "lungo"]


def brewmeter(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "brewmeter.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


@pytest.fixture
def image(tmp_path):
    return tmp_path / "f.img"


@pytest.fixture
def emulate(image):
    p = subprocess.Popen([sys.executable, "-m", "brewmeter.cli", "emulate", "--image",
                          str(image)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        serial = p.stdout.readline().split(": ", 1)[1].strip()
        line = p.stdout.readline() + p.stdout.readline()
        m = re.match(r"control: (\S+)\n\(export BREWMETER_CONTROL=(\S+) ", line)
        assert m and m[1] == m[2], line
        yield serial, m[1]
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(30)


@pytest.mark.slow
@pytest.mark.board
def test_press_flow_and_power_cut_on_a_running_emulator(emulate):
    serial, control = emulate
    Flasher(serial).flash("emulator", emulator_provision())
    env = {"BREWMETER_CONTROL": control}
    out = brewmeter("press", "espresso", "--seconds", "9", "--ml", "30", env=env)
    assert out.returncode == 0, out.stderr
    assert "espresso: held 9 s, 30 ml (58 flow pulses)" in out.stdout  # 30 ml x 1925/L
    time.sleep(0.5)
    c = read_counters(serial, KINDS)
    assert c["brews"]["espresso"] == 1
    out = brewmeter("flow", "--ml", "50", env=env)
    assert out.returncode == 0 and "96 pulses" in out.stdout, out.stderr
    boots = BoardControl(control).call("status")["boots"]
    out = brewmeter("power-cut", env=env)
    assert out.returncode == 0, out.stderr
    assert BoardControl(control).call("status")["boots"] == boots + 1
    assert read_counters(serial, KINDS)["brews"]["espresso"] == 1  # kept across the cut


def test_control_address_answers_help(emulate):
    _, control = emulate
    cmds = BoardControl(control).call("help")["commands"]
    assert {"press", "release", "pulses", "power_cut", "status", "help"} <= set(cmds)
    assert "brew" in cmds["press"]
    with pytest.raises(Exception, match="help"):
        BoardControl(control).call("bogus")


@pytest.mark.board
def test_an_image_in_use_is_refused(emulate, image):
    out = brewmeter("emulate", "--image", str(image), env={})
    assert out.returncode == 1 and "is in use by another emulated board" in out.stderr
    from brewmeter.emulator.board import Board
    from brewmeter.emulator.common import BoardError

    with pytest.raises(BoardError, match="in use"):
        Board(image).start_sync()


def test_no_board_is_a_clear_error(tmp_path):
    out = brewmeter("press", "espresso", env={"BREWMETER_CONTROL": ""})
    assert out.returncode == 1 and "--control HOST:PORT" in out.stderr
    out = brewmeter("flow", "--ml", "5", "--control", "127.0.0.1:9", env={})
    assert out.returncode == 1 and "no emulated board answers" in out.stderr


def test_ports_lists_usb_ids_and_marks_esp32_adapters():
    from brewmeter import ports
    from serial.tools.list_ports_common import ListPortInfo

    cp = ListPortInfo("/dev/ttyUSB0", skip_link_detection=True)
    cp.vid, cp.pid, cp.manufacturer, cp.description = 0x10C4, 0xEA60, "Silicon Labs", "CP2102"
    other = ListPortInfo("/dev/ttyS0", skip_link_detection=True)
    lines = ports.describe([other, cp]).splitlines()
    assert lines[0].split() == ["/dev/ttyS0", "-"]  # no USB ids, nothing to tell
    assert "10c4:ea60" in lines[1] and "ESP32 adapter" in lines[1] and "CP2102" in lines[1]
    assert "no serial ports found" in ports.describe([])
    out = subprocess.run([sys.executable, "-m", "brewmeter.cli", "ports"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip()
