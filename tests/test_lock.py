"""A provisioned machine's serial port is locked: on the emulated board, with unmodified
mpremote and pyserial, as somebody with a USB cable meets it, and as a field tech opens it
with the service PIN (`brewmeter unlock`, `flash.sh`: from --pin-file, $BREWMETER_PIN or a
prompt without echo, never the command line)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from brewmeter import cli, fieldtech, flashsh, ports
from brewmeter.emulator.board import Board
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.profiles import BOARDS
from brewmeter.unixport import tool
from test_flash import _brew

pytestmark = pytest.mark.board  # every test here runs the emulated board

PIN = "246810"
LOCKED = b"locked: unlock with --pin"


def _setup(d):
    """A board profile with a short maintenance window and REPL watch, and a locked
    provisioning file (the PIN in it: flash.sh hashes it)."""
    prof = json.loads((BOARDS / "emulator.json").read_text()) | {"unlock_s": 8,
                                                                 "repl_idle_s": 5}
    (d / "board.json").write_text(json.dumps(prof))
    prov = emulator_provision() | {"lock": True, "service_pin": PIN}
    (d / "prov.json").write_text(json.dumps(prov))
    return str(d / "board.json"), prov


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    d = tmp_path_factory.mktemp("lock")
    prof, prov = _setup(d)
    with Board(d / "flash.img", board_profile=prof) as b:
        Flasher(b.serial_port).flash(prof, prov)
        yield b, prov, prof, d


def _mpremote(port: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    p = subprocess.run([tool("mpremote"), "connect", port, *args], capture_output=True,
                       text=True, timeout=60)
    return p, time.monotonic() - t


def _unlock(port: str, pin: str, monkeypatch) -> int:  # noqa: ANN001
    """`brewmeter unlock`, the PIN in $BREWMETER_PIN."""
    monkeypatch.setenv("BREWMETER_PIN", pin)
    return cli.main(["unlock", "--port", port])


def _answers_locked(port: str, timeout: float = 3.0) -> bool:
    """Does the running app answer a raw-REPL request (Ctrl-A) with 'locked'?"""
    with ports.open_port(port, timeout=0.1) as s:
        s.write(b"\r\x01")
        seen, end = b"", time.monotonic() + timeout
        while time.monotonic() < end and LOCKED not in seen:
            seen += s.read(256)
    return LOCKED in seen


def test_the_pin_is_nowhere_in_the_flash_image(locked):
    _, prov, _, d = locked
    image = (d / "flash.img").read_bytes() + (d / "flash.img.rom").read_bytes()
    assert b"pbkdf2-sha256$3000$" in image  # the provisioning is there, with the PIN's hash
    assert prov["key"].encode() in image  # (the key is: flash encryption's job, docs/flashing.md)
    assert PIN.encode() not in image


@pytest.mark.slow
def test_locked_ctrl_c_is_ignored_and_mpremote_fails_quickly_showing_nothing(locked, capsys):
    board, prov, _, _ = locked
    port = board.serial_port
    before = fieldtech.ask(port, "counters")
    with ports.open_port(port, timeout=0.2) as s:
        s.write(b"\x03\r\x03\x03")
    _brew(board)  # right after the Ctrl-Cs: counted
    after = fieldtech.ask(port, "counters")
    assert after["brews"]["espresso"] == before["brews"]["espresso"] + 1, after
    assert after["boots"] == before["boots"]  # nothing stopped nor restarted the app
    p, took = _mpremote(port, "fs", "cat", ":provision.json")
    out = p.stdout + p.stderr
    # mpremote's own error after its own 10 s raw-REPL timeout (it cannot give up sooner)
    assert p.returncode != 0 and "could not enter raw repl" in out and took < 12, (took, out)
    assert LOCKED.decode() in out  # the app's answer to its Ctrl-A, which it prints
    assert prov["key"] not in out and prov["device_id"] not in out and "wifi" not in out
    assert cli.main(["counters", "--port", port, "--json"]) == 0  # read-only: no PIN needed
    assert json.loads(capsys.readouterr().out)["brews"] == after["brews"]


@pytest.mark.slow
def test_flash_sh_on_a_locked_machine_without_pin_says_so_and_changes_nothing(locked, capsys):
    board, _, prof, d = locked
    port = board.serial_port
    before = fieldtech.ask(port, "counters")
    image = (d / "flash.img").read_bytes()
    assert flashsh.main(["--port", port, "--board", prof, "--provision",
                         str(d / "prov.json")]) == 2
    assert "locked: give its service PIN with --pin-file FILE or $BREWMETER_PIN" in \
        capsys.readouterr().err
    assert fieldtech.ask(port, "counters") == before  # no restart (boots), nothing else
    assert (d / "flash.img").read_bytes() == image
    with pytest.raises(fieldtech.NoBrewmeter, match="locked: open it with `brewmeter unlock`"):
        fieldtech.restart(port, timeout=3)  # `brewmeter restart`: Ctrl-C, Ctrl-D ignored


@pytest.mark.slow
def test_right_pin_opens_mpremote_and_flash_sh_and_the_app_comes_back_locked(locked, capsys,
                                                                             tmp_path):
    board, prov, prof, d = locked
    port = board.serial_port
    _brew(board, "lungo", 10.3)
    before = fieldtech.ask(port, "counters")
    (tmp_path / "pin").write_text(PIN + "\n")
    assert cli.main(["unlock", "--port", port, "--pin-file", str(tmp_path / "pin")]) == 0
    assert "open for 8 s" in capsys.readouterr().out
    mark = board.transcript_end()
    p, _ = _mpremote(port, "fs", "ls", ":")  # Ctrl-C works now: the app stops for the REPL
    assert p.returncode == 0 and "board.json" in p.stdout, p.stdout + p.stderr
    # Left alone, the REPL watch restarts the app after repl_idle_s (5 s): it counts again,
    # and the port is locked again.
    board.wait_output(b"brewmeter ready", timeout=30, start=mark)
    time.sleep(0.5)  # past the sensors' first poll: an input on before it is never a brew
    _brew(board, "hot_water")
    after = fieldtech.ask(port, "counters")
    assert after["brews"]["hot_water"] == before["brews"]["hot_water"] + 1
    assert _answers_locked(port)
    events = fieldtech.ask(port, "events")
    assert any(e.get("action") == "service unlock" for e in events), events
    # flash.sh --pin-file: unlocks, re-flashes, restarts locked; the counters are kept.
    assert flashsh.main(["--port", port, "--board", prof, "--provision", str(d / "prov.json"),
                         "--pin-file", str(tmp_path / "pin")]) == 0, capsys.readouterr()
    kept = fieldtech.ask(port, "counters")
    unlocks = [e for e in fieldtech.ask(port, "events") if e.get("action") == "service unlock"]
    assert len(unlocks) == 2  # flash.sh's own unlock, recorded (and kept over the re-flash)
    assert kept["brews"] == after["brews"] and kept["water_ml"] == after["water_ml"]
    assert _answers_locked(port)


@pytest.mark.slow
def test_the_window_ends_by_itself_and_the_port_locks_again(locked):
    board, _, _, _ = locked
    port = board.serial_port
    assert "open for 8 s" in fieldtech.unlock(port, PIN)
    assert not _answers_locked(port, timeout=1.0)  # (the REPL's Ctrl-A is not sent: no Ctrl-C)
    mark = board.transcript_end()
    board.wait_output(b"maintenance window over", timeout=15, start=mark)
    assert _answers_locked(port)


def test_wrong_pins_are_refused_and_the_lock_survives_a_reset(tmp_path, capsys, monkeypatch):
    prof, prov = _setup(tmp_path)
    with Board(tmp_path / "flash.img", board_profile=prof) as board:
        Flasher(board.serial_port).flash(prof, prov)
        port = board.serial_port
        for i in range(4):
            assert _unlock(port, "135790", monkeypatch) == 1
            assert f"wrong PIN ({4 - i} tries left)" in capsys.readouterr().err
        assert _unlock(port, "135790", monkeypatch) == 1
        assert "locked for 300 s" in capsys.readouterr().err
        mark = board.transcript_end()
        board.control().reset()
        board.wait_output(b"brewmeter ready", timeout=30, start=mark)
        assert _unlock(port, PIN, monkeypatch) == 1  # even the right one
        assert "service actions locked" in capsys.readouterr().err
        assert _answers_locked(port)


def _cli(*args: str, pin: str | None = None) -> subprocess.CompletedProcess:
    import sys

    env = {k: v for k, v in os.environ.items() if k != "BREWMETER_PIN"}
    return subprocess.run([sys.executable, "-m", "brewmeter.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env | ({} if pin is None else
                                                           {"BREWMETER_PIN": pin}))


@pytest.mark.board
@pytest.mark.slow
def test_a_missing_or_malformed_pin_is_a_usage_error_that_spends_no_try(locked, capsys,
                                                                        monkeypatch, tmp_path):
    board, prov, prof, d = locked
    port = board.serial_port
    assert _unlock(port, "135790", monkeypatch) == 1
    tries = int(re.search(r"wrong PIN \((\d) tries left\)", capsys.readouterr().err)[1])
    mark = board.transcript_end()
    (tmp_path / "short").write_text("12\n")
    (tmp_path / "empty").write_text("")
    for args, pin, says in (
            (["unlock"], None, "service PIN (6-8 digits) is needed: give it with --pin-file "
             "FILE or $BREWMETER_PIN, or type it when asked at a terminal"),
            (["sync"], None, "is needed"), (["refill", "filter"], None, "is needed"),
            (["sync"], "12", "$BREWMETER_PIN: a service PIN is 6-8 digits"),
            (["refill", "coffee"], "12345x", "6-8 digits"),
            (["unlock", "--pin-file", str(tmp_path / "short")], None, "short: a service PIN"),
            (["unlock", "--pin-file", str(tmp_path / "empty")], None, "empty"),
            (["unlock", "--pin-file", str(tmp_path / "none")], None, "cannot read"),
            (["unlock", "--pin", PIN], None, "--pin is not taken on the command line")):
        p = _cli(*args, "--port", port, pin=pin)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert says in p.stderr and PIN not in p.stdout + p.stderr, (args, p.stderr)
    p = subprocess.run(["./flash.sh", "--port", port, "--provision", str(d / "prov.json")],
                       capture_output=True, text=True, timeout=60, cwd=BOARDS.parent,
                       env=os.environ | {"BREWMETER_PIN": "abc"})
    assert p.returncode == 2 and "6-8 digits" in p.stderr, p.stderr
    time.sleep(0.5)
    assert b"--pin" not in board.transcript(mark)  # nothing reached the machine
    # The try count, as the next wrong PIN tells it: unchanged by the slips.
    assert _unlock(port, "135790", monkeypatch) == 1
    assert f"wrong PIN ({tries - 1} tries left)" in capsys.readouterr().err
    # The right one works from the laptop's own service commands (and clears the count).
    p = _cli("refill", "coffee", "--port", port, pin=PIN)
    assert p.returncode == 0 and "coffee refilled" in p.stdout, p.stdout + p.stderr
    p = _cli("sync", "--port", port, pin=PIN)
    assert p.stdout.startswith(f"{port}: sync: "), p.stdout + p.stderr
    assert _unlock(port, "135790", monkeypatch) == 1
    assert "wrong PIN (4 tries left)" in capsys.readouterr().err


REPL_LEAK = b"print(open('/provision.json').read())\r"


def _storm(board, resets: int, secrets: list[bytes]) -> bytes:
    """Ctrl-C every few milliseconds from before each reset on, each followed by a line that
    would print the provisioning at a REPL, while the board is reset `resets` times at
    varied points of its boot. Returns what the port showed meanwhile."""
    import random
    import threading

    stop = threading.Event()

    def hammer():
        with ports.open_port(board.serial_port, timeout=0) as s:
            while not stop.is_set():
                s.write(b"\x03" + REPL_LEAK)
                s.read(4096)
                time.sleep(0.003)

    mark = board.transcript_end()
    t = threading.Thread(target=hammer)
    t.start()
    rng = random.Random(25)
    try:
        with board.control() as ctl:
            for _ in range(resets):
                time.sleep(rng.uniform(0.05, 1.2))  # from early in a boot to a running app
                ctl.reset()
        time.sleep(1.5)
    finally:
        stop.set()
        t.join()
    end, quiet = time.monotonic() + 30, board.transcript_end()
    while time.monotonic() < end:  # until the console has answered the whole backlog
        time.sleep(0.5)
        quiet, was = board.transcript_end(), quiet
        if quiet == was:
            break
    seen = board.transcript(mark)
    assert seen.count(b"MPY: soft reboot") == 0  # (resets, not soft ones: each a fresh boot)
    for s in filter(None, secrets):
        assert s not in seen
    for bad in (b">>> ", b"raw REPL", b"Traceback"):  # (with what came around it, if seen)
        at = seen.find(bad)
        assert at < 0, (bad, seen[max(0, at - 400):at + 600])
    return seen


@pytest.mark.slow
def test_ctrl_c_from_the_reset_on_never_opens_the_repl_bad_profile_included(tmp_path, capsys,
                                                                           monkeypatch):
    """Somebody with a USB cable resets the machine at will (DTR/RTS) and sends Ctrl-C all
    along, from the reset on: the REPL never comes up, not during boot.py, main.py or the
    app's start, nor on a machine whose board profile is bad, which waits, locked, for a
    service unlock."""
    prof, prov = _setup(tmp_path)
    secrets = [prov["key"].encode(), prov["wifi"]["password"].encode(), b"pbkdf2-sha256$"]
    with Board(tmp_path / "flash.img", board_profile=prof) as board:
        Flasher(board.serial_port).flash(prof, prov)
        port = board.serial_port
        seen = _storm(board, 16, secrets)
        came_up = seen.count(b"brewmeter ready")
        assert came_up >= 10  # the app came up after most resets
        boots = fieldtech.ask(port, "counters")["boots"]
        # Every boot that came up was counted (a reset may land before the app counts its
        # boot: on a loaded machine, one of those 0.05 s apart), and the flash's restart.
        assert boots >= 1 + came_up
        # A bad profile (written through the opened port) on the locked machine.
        assert "open for" in fieldtech.unlock(port, PIN)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(json.loads((tmp_path / "board.json").read_text())
                                  | {"min_brew_s": "8"}))
        p, _ = _mpremote(port, "fs", "cp", str(bad), ":board.json")
        assert p.returncode == 0, p.stdout + p.stderr
        mark = board.transcript_end()
        board.control().reset()
        board.wait_output(b"brewmeter: not started: /board.json: field 'min_brew_s'",
                          timeout=30, start=mark)
        assert _answers_locked(port)
        seen = _storm(board, 10, secrets)
        assert seen.count(b"not started") >= 6 and b"brewmeter ready" not in seen
        # It waits for the service PIN, counting the tries as ever; then flash.sh mends it.
        assert _unlock(port, "135790", monkeypatch) == 1
        assert "wrong PIN (4 tries left)" in capsys.readouterr().err
        monkeypatch.setenv("BREWMETER_PIN", PIN)
        assert flashsh.main(["--port", port, "--board", prof, "--provision",
                             str(tmp_path / "prov.json")]) == 0
        assert fieldtech.ask(port, "counters")["boots"] > boots  # (none while it waited)
        assert _answers_locked(port)


@pytest.mark.slow
def test_a_power_cut_at_any_flash_op_of_a_pin_check_tells_a_right_pin_from_no_wrong_one(
        tmp_path):
    """On MicroPython's littlefs: the power cut (control address, after_ops) at each flash
    operation of a check, from the first on. Wherever a cut takes a wrong PIN's try back
    (it was not yet on flash), the right PIN cut at the same operation gets no answer
    either, so no cut tells a right PIN from a wrong one for free; a wrong PIN answered is
    counted. (That the try is on flash before the hash starts is checked at every cut
    point under CPython's littlefs: tests/test_console.py.)"""
    prof, prov = _setup(tmp_path)
    with Board(tmp_path / "flash.img", board_profile=prof) as board:
        Flasher(board.serial_port).flash(prof, prov)
        port = board.serial_port
        ctl = board.control()

        def send(pin: str, cut: int | None = None) -> str:
            """`service unlock --pin PIN`, the power cut at the `cut`-th flash operation
            from now: the console's answer, or "cut" (then the board is up again)."""
            mark, boots = board.transcript_end(), board.boots
            if cut:
                ctl.power_cut(after_ops=cut)
            with ports.open_port(port, timeout=0.05) as s:
                s.write(f"\rservice unlock --pin {pin}\r".encode())
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    s.read(4096)
                    said = board.transcript(mark)
                    if board.boots > boots:
                        board.wait_output(b"brewmeter ready", timeout=30, start=mark)
                        return "cut"
                    m = re.search(rb"(wrong PIN[^\r]*|unlock: the port is open)", said)
                    if m:
                        if cut:
                            ctl.power_cut(after_ops=1 << 30)  # disarmed: never reached
                        return m[1].decode()
            raise AssertionError(board.transcript(mark))

        for k in range(1, 20):
            assert send(PIN) == "unlock: the port is open"  # no wrong tries saved
            wrong = send("135790", cut=k)
            if wrong != "cut":
                assert wrong == "wrong PIN (4 tries left)" and k > 1
                break
            taken_back = send("135790") == "wrong PIN (4 tries left)"
            assert send(PIN) == "unlock: the port is open"
            if taken_back:
                assert send(PIN, cut=k) == "cut", k
        else:
            raise AssertionError("the check's flash operations never ended")
