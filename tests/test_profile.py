"""Board profiles: the shipped ones load; a bad one is refused with its file and field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from brewmeter import cli
from brewmeter.profiles import BOARDS, ProfileError, load_profile, validate


def test_shipped_boards_are_valid():
    names = sorted(p.stem for p in BOARDS.glob("*.json"))
    assert {"esp32-generic", "esp32-s3-devkitc", "emulator"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.board == name
        assert p.kinds == tuple(sorted(p.kinds))


def _write(tmp_path: Path, **changes) -> Path:
    data = json.loads((BOARDS / "esp32-generic.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "changes, field, words",
    [
        ({"flow_pin": None}, "flow_pin", "missing"),
        ({"debounce_ms": -5}, "debounce_ms", "outside"),
        ({"pulses_per_litre": 10**9}, "pulses_per_litre", "outside"),
        ({"min_brew_s": True}, "min_brew_s", "number"),
        ({"debounce_ms": 2.5}, "debounce_ms", "integer"),
        ({"colour": "red"}, "colour", "unknown field"),
        ({"flow_pin": 25}, "flow_pin", "already used by 'inputs.espresso'"),
        ({"inputs": {"espresso": 7}}, "inputs.espresso", "not usable"),  # SPI flash pin
        ({"led_pin": 35}, "led_pin", "not usable as an output"),  # input-only pin
        ({"inputs": {}}, "inputs", "must map"),
        ({"inputs": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}}, "inputs", "must map"),
        ({"inputs": {"Espresso!": 25}}, "inputs.Espresso!", "names are"),
        ({"chip": "esp8266"}, "chip", "must be one of"),
        ({"max_run_s": 8}, "max_run_s", "outside"),
        ({"max_run_s": 10, "min_brew_s": 20}, "max_run_s", "greater than min_brew_s"),
        ({"board": ""}, "board", "string"),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path, changes, field, words):
    path = _write(tmp_path, **changes)
    with pytest.raises(ProfileError) as e:
        load_profile(str(path))
    assert e.value.field == field
    assert str(path) in str(e.value) and f"'{field}'" in str(e.value)
    assert words in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"board": "x",')
    with pytest.raises(ProfileError, match="broken.json: field '\\(file\\)': not valid JSON"):
        load_profile(str(path))
    with pytest.raises(ProfileError, match="nosuchboard.json.*cannot read.*emulator"):
        load_profile("nosuchboard")


def test_cli_rejects_bad_profile_with_exit_2(tmp_path, capsys):
    path = _write(tmp_path, flow_pin=26)
    assert cli.main(["simulate", "--days", "1", "--board", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad board profile" in err and "bad.json" in err and "'flow_pin'" in err
    assert cli.main(["check-board", "esp32-generic", "emulator"]) == 0
    assert "esp32-generic.json: ok" in capsys.readouterr().out


def test_an_oversized_profile_file_is_refused_unread(tmp_path):
    from app.startup import load_profile

    p = tmp_path / "board.json"
    p.write_text('{"board": "x",' + " " * 5000 + "}")
    with pytest.raises(ValueError, match="over 4096 bytes"):
        load_profile(str(p))


def test_old_service_pin_name_is_accepted_as_button_pin_with_a_message(tmp_path):
    import json
    import subprocess
    import sys

    data = json.loads((BOARDS / "emulator.json").read_text())
    data["service_pin"] = data.pop("button_pin")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    p = subprocess.run([sys.executable, "-m", "brewmeter.cli", "check-board", str(old)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "ok" in p.stdout
    assert "'service_pin' is now named 'button_pin'" in p.stderr
    assert load_profile(str(old)).button_pin == 11
    data["button_pin"] = 13
    with pytest.raises(ProfileError, match="keep only that"):
        validate(data, "x")


@pytest.mark.board
def test_a_bad_profile_on_the_board_says_which_field_and_starts_nothing(tmp_path):
    """Under MicroPython too: an exception class has no __init__ attribute there, so
    ProfileError calling ValueError.__init__ raised AttributeError instead of itself."""
    from brewmeter.emulator.board import Board
    from brewmeter.emulator.lfs import install
    from brewmeter.flashfiles import build

    tree = tmp_path / "tree"
    tree.mkdir()
    build(tree, "emulator", None)
    data = json.loads((tree / "board.json").read_text())
    (tree / "board.json").write_text(json.dumps(data | {"flow_pin": 99}))
    install(tmp_path / "flash.img", tree)
    with Board(tmp_path / "flash.img", heap="192K", rom=0) as b:  # the app on the fs: room
        b.wait_output(b"brewmeter: not started: /board.json: field 'flow_pin'", timeout=30)
        b.wait_output(b">>> ", timeout=10)  # the REPL, for re-flashing
        assert b"Traceback" not in b.transcript()
