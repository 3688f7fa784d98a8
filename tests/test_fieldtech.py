"""The field techs' side: `brewmeter counters/status/filter/report` over a real pty to the
firmware's service console on the emulated board, mpremote interleaved, and garbage."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time

import pytest
from brewmeter import cli, fieldtech, ports
from brewmeter.emulator.board import Board
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.runs.demo import read_counters
from brewmeter.unixport import tool

pytestmark = pytest.mark.board  # every test here runs the emulated board


@pytest.fixture(scope="module")
def flashed(tmp_path_factory):
    with Board(tmp_path_factory.mktemp("b") / "flash.img", board_profile="emulator") as b:
        f = Flasher(b.serial_port)
        f.flash("emulator", emulator_provision())
        yield b, f


def test_counters_status_filter_and_report(flashed, capsys, tmp_path):
    board, _ = flashed
    assert cli.main(["counters", "--port", board.serial_port, "--json"]) == 0
    counters = json.loads(capsys.readouterr().out)
    assert "brews_total" in counters and "day" not in counters  # no bookkeeping shown
    assert cli.main(["status", "--port", board.serial_port]) == 0
    out = capsys.readouterr().out
    assert "fw" in out and "heap_free" in out and "key" not in out
    assert cli.main(["consumables", "--port", board.serial_port, "--json"]) == 0
    sup = json.loads(capsys.readouterr().out)
    assert set(sup) == {"coffee", "filter", "descaler", "tablets"}
    assert sup["coffee"]["capacity"] == 100 and sup["coffee"]["order"] == "none"
    assert cli.main(["report", "--port", board.serial_port, "--out",
                     str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert {"read_at", "status", "counters", "filter", "consumables", "faults", "events",
            "config"} <= set(doc)
    # Never over a file without --force; by default DEVICE_ID-DATE.json; a bad path is said.
    assert cli.main(["report", "--port", board.serial_port, "--out",
                     str(tmp_path / "r.json")]) == 2
    assert "r.json already exists: give --force" in capsys.readouterr().err
    assert cli.main(["report", "--port", board.serial_port, "--out", str(tmp_path / "r.json"),
                     "--force"]) == 0
    assert cli.main(["report", "--port", board.serial_port, "--out",
                     str(tmp_path / "no" / "r.json")]) == 2
    assert "cannot write: No such file or directory" in capsys.readouterr().err
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert cli.main(["report", "--port", board.serial_port]) == 0
    finally:
        os.chdir(here)
    from datetime import UTC, datetime

    name = f"{doc['status']['device_id']}-{datetime.now(UTC).date().isoformat()}.json"
    assert name in capsys.readouterr().out and (tmp_path / name).is_file()


def test_a_device_id_that_is_no_device_id_names_no_report_file(flashed, tmp_path, capsys,
                                                                monkeypatch):
    """A device whose id says "../../x" (its provisioning rewritten by hand): `report`
    refuses the file name it would make, and writes nothing anywhere."""
    board, f = flashed
    port = board.serial_port
    good = f.read_files("provision.json")["provision.json"]
    assert good is not None
    (tmp_path / "p.json").write_text(json.dumps(json.loads(good) | {"device_id": "../../x"}))
    f.mpremote("fs", "cp", str(tmp_path / "p.json"), ":provision.json")
    here = tmp_path / "visit" / "here"
    here.mkdir(parents=True)
    try:
        f.restart()
        assert fieldtech.ask(port, "status")["device_id"] == "../../x"
        monkeypatch.chdir(here)
        assert cli.main(["report", "--port", port]) == 2
        err = capsys.readouterr().err
        assert "the device reports the id '../../x', which is no device id" in err, err
        assert "nothing written" in err
        assert sorted(x.name for x in tmp_path.rglob("*")) == ["here", "p.json", "visit"]
    finally:
        (tmp_path / "p.json").write_text(good)
        f.mpremote("fs", "cp", str(tmp_path / "p.json"), ":provision.json")
        f.restart()


def test_a_read_that_fails_half_way_quotes_none_of_the_devices_files(flashed):
    from brewmeter.flasher import _READ
    from brewmeter.flashfiles import FlashError

    _, f = flashed
    prov = json.loads(f.read_files("provision.json")["provision.json"] or "{}")
    with pytest.raises(FlashError, match="failed") as e:
        f.mpremote("exec", _READ % '["provision.json"]' + "raise OSError(5)\n")
    assert "OSError" in str(e.value) and prov["key"] not in str(e.value)
    f.restart()


@pytest.mark.slow
def test_garbage_on_the_port_while_brewing_changes_nothing_and_loses_no_brew(tmp_path):
    with Board(tmp_path / "flash.img", board_profile="emulator") as board:
        Flasher(board.serial_port).flash("emulator", emulator_provision())
        _garbage_while_brewing(board)


def _garbage_while_brewing(board: Board) -> None:
    before = fieldtech.ask(board.serial_port, "counters")
    ctl = board.control()
    ctl.press("lungo")
    rng = random.Random(7)
    with ports.open_port(board.serial_port) as s:
        end = time.monotonic() + 10  # a 10 s lungo (min_brew_s is 8) under the fuzzing
        while time.monotonic() < end:
            # Random bytes (but Ctrl-C/Ctrl-D: those are the REPL's, tested elsewhere),
            # a 10 KiB line, a burst of commands without a PIN.
            blob = os.urandom(rng.randrange(1, 2048)).replace(b"\x03", b"").replace(b"\x04", b"")
            s.write(blob + b"x" * 10_000 + b"\r" + b"filter change\r" * 50)
            time.sleep(0.5)
    ctl.release("lungo")
    # The console works through its backlog (hundreds of KB) while the counting goes on;
    # ask until the brew shows, for as long as a human would wait.
    end = time.monotonic() + 30
    after = before
    while time.monotonic() < end and after["brews"]["lungo"] == before["brews"]["lungo"]:
        time.sleep(1)
        after = fieldtech.ask(board.serial_port, "counters", timeout=30)
    assert after["brews"]["lungo"] == before["brews"]["lungo"] + 1, after
    assert after["rinses"] == before["rinses"] and after["stuck_runs"] == 0
    assert after["filters"] == before["filters"]  # nothing changed without a PIN


def test_repl_no_answer_and_back_to_the_app_after_mpremote(flashed):
    board, f = flashed
    # mpremote stops the app (Ctrl-C) and leaves the REPL: the tools say so clearly.
    read_counters(board.serial_port, ["espresso", "hot_water", "lungo"])
    with pytest.raises(fieldtech.NoBrewmeter, match="REPL answers"):
        fieldtech.ask(board.serial_port, "counters", timeout=1.5)
    subprocess.run([tool("mpremote"), "connect", board.serial_port, "soft-reset"],
                   capture_output=True, timeout=60)
    f.restart()  # soft reset from the friendly REPL: the app runs again
    assert "brews_total" in fieldtech.ask(board.serial_port, "counters")
    master, slave = os.openpty()
    try:
        with pytest.raises(fieldtech.NoBrewmeter, match="no answer"):
            fieldtech.ask(os.ttyname(slave), "counters", timeout=0.5)
    finally:
        os.close(master)
        os.close(slave)
    with pytest.raises(ports.PortError, match="no such port"):
        fieldtech.ask("/dev/ttyNOPE", "counters")


def test_a_service_action_over_the_serial_port(flashed):
    board, _ = flashed
    before = fieldtech.ask(board.serial_port, "counters")["filters"]
    with ports.open_port(board.serial_port, timeout=0.2) as s:
        s.write(b"filter change --pin 246810\r")
        seen = b""
        end = time.monotonic() + 5
        while b"filter changed" not in seen and time.monotonic() < end:
            seen += s.read(256)
    assert b"filter changed" in seen
    assert fieldtech.ask(board.serial_port, "counters")["filters"] == before + 1
    events = fieldtech.ask(board.serial_port, "events")
    assert events[-1]["kind"] == "filter_changed" and events[-1]["by"] == "console"


def test_lone_ctrl_d_is_ignored_and_ctrl_c_saves_before_the_repl(flashed):
    """Ctrl-D while the app runs is just a byte; Ctrl-C stops it into the REPL, saving."""
    board, f = flashed
    before = fieldtech.ask(board.serial_port, "counters")
    with ports.open_port(board.serial_port) as s:
        s.write(b"\x04")  # not at a REPL: nothing to soft-reset
    assert fieldtech.ask(board.serial_port, "counters")["boots"] == before["boots"]
    ctl = board.control()
    ctl.press("espresso")  # a rinse: saved only within the flush window ...
    time.sleep(1.5)
    ctl.release("espresso")
    time.sleep(0.3)
    # ... or at once when Ctrl-C stops the app: mpremote's Ctrl-C, then it reads the flash.
    saved = read_counters(board.serial_port, ["espresso", "hot_water", "lungo"])
    assert saved["rinses"] == before["rinses"] + 1
    f.restart()
    assert fieldtech.ask(board.serial_port, "counters")["rinses"] == before["rinses"] + 1


def test_port_errors_each_say_what_to_do(monkeypatch, tmp_path):
    import errno

    import serial

    fake = tmp_path / "ttyUSB0"
    fake.touch()  # the device node exists ...

    def refuse(err: int, text: str):  # ... but opening it fails as the kernel would say
        def open_(*a: object, **k: object) -> None:
            raise serial.SerialException(err, text)
        return open_

    monkeypatch.setattr(serial, "Serial", refuse(errno.EACCES, "Permission denied"))
    with pytest.raises(ports.PortError, match="permission denied.*dialout"):
        ports.open_port(str(fake))
    monkeypatch.setattr(serial, "Serial", refuse(errno.EBUSY, "Device or resource busy"))
    with pytest.raises(ports.PortError, match="port busy"):
        ports.open_port(str(fake))
    monkeypatch.setattr(ports.list_ports, "comports", lambda: [])
    with pytest.raises(ports.PortError, match="no ESP32 USB serial adapter"):
        ports.pick(None)


def _device_says(port: str, command: str) -> str:
    """What the device console itself prints for `command`, as a terminal shows it."""
    with ports.open_port(port, timeout=0.1) as s:
        s.reset_input_buffer()
        s.write(b"\r" + command.encode() + b"\r")
        seen, end = b"", time.monotonic() + 5
        while time.monotonic() < end and not seen.endswith(b"brewmeter> "):
            seen += s.read(4096)
    answer = seen.split(command.encode() + b"\r\n", 1)[1].removesuffix(b"brewmeter> ")
    return answer.decode().replace("\r\n", "\n").strip()


_VARY = ("uptime_s", "heap_free", "last_sync")  # change between two reads a second apart


def _steady(text: str) -> list[str]:
    return [line.split()[0] if line.split()[:1] and line.split()[0] in _VARY else line
            for line in text.splitlines()]


@pytest.mark.board
@pytest.mark.parametrize("command", ["counters", "status", "filter", "consumables"])
def test_the_laptop_says_what_the_device_console_says(flashed, capsys, command):
    board, _ = flashed
    device = _device_says(board.serial_port, command)
    assert cli.main([command, "--port", board.serial_port]) == 0
    laptop = capsys.readouterr().out.strip()
    assert _steady(laptop) == _steady(device)
    if command == "consumables":  # the device's words, not a dump of its JSON
        assert "coffee    100% left (0 of 100 units used), no forecast" in laptop
        assert "capacity" not in laptop
    if command == "filter":  # its limits shown
        assert re.search(r"^limits +due at \d+(\.\d+)? L or \d+ months$", laptop, re.M)
    if command == "status":
        assert re.search(r"^flash_used +\d+ of \d+ KiB$", laptop, re.M)


@pytest.mark.board
def test_json_numbers_are_numbers_with_units_in_the_keys(flashed, capsys):
    board, _ = flashed
    assert cli.main(["status", "--port", board.serial_port, "--json"]) == 0
    laptop = json.loads(capsys.readouterr().out)
    device = json.loads(_device_says(board.serial_port, "status --json"))
    assert set(laptop) == set(device)  # the same shape on both sides
    for key in ("flash_used_kib", "flash_total_kib", "uptime_s", "heap_free", "boots"):
        assert type(laptop[key]) is int, (key, laptop[key])
    assert 0 < laptop["flash_used_kib"] < laptop["flash_total_kib"]
    assert isinstance(laptop["flash_wear_est_pct"], float | int)
    assert laptop["last_sync"] in ("never", "ok") or isinstance(laptop["last_sync"], str)
    assert laptop["last_sync_age_s"] is None or type(laptop["last_sync_age_s"]) is int
    assert not any(isinstance(v, str) and ("KiB" in v or " ago" in v) for v in laptop.values())
    assert cli.main(["filter", "--port", board.serial_port, "--json"]) == 0
    f = json.loads(capsys.readouterr().out)
    assert f["due_at_litres"] > 0 and type(f["due_at_months"]) is int
    assert type(f["brews"]) is int and isinstance(f["litres"], float | int)
