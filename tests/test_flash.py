"""flash.sh against the emulated board: a first flash, a re-flash that keeps the counters,
--erase-data, --dry-run, and each error a maker's engineer can run into."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import select
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from brewmeter import flasher, unixport
from brewmeter.emulator.board import Board
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import FlashError, check_provision, emulator_provision
from brewmeter.runs.demo import read_counters

pytestmark = pytest.mark.board  # every test here runs the emulated board

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["espresso", "hot_water", "lungo"]


@pytest.fixture
def board(tmp_path):
    with Board(tmp_path / "flash.img", board_profile="emulator") as b:
        yield b


def _brew(board: Board, kind: str = "espresso", seconds: float = 8.3) -> None:
    ctl = board.control()
    ctl.press(kind)
    ctl.pulses(100)
    time.sleep(seconds)
    ctl.release(kind)
    time.sleep(0.3)


@pytest.mark.slow
def test_flash_brew_reflash_keeps_counters_then_erase(board, tmp_path):
    prov = emulator_provision()
    f = Flasher(board.serial_port)
    f.flash("emulator", prov)
    _brew(board)
    assert read_counters(board.serial_port, KINDS)["brews"]["espresso"] == 1
    f.flash("emulator", prov)  # a re-flash: firmware unchanged, data kept
    assert read_counters(board.serial_port, KINDS)["brews_total"] == 1
    f.flash("emulator", prov, erase_data=True)
    assert read_counters(board.serial_port, KINDS)["brews_total"] == 0


@pytest.mark.slow
def test_flash_sh_dry_run_prints_mpremote_commands(tmp_path):
    prov = tmp_path / "p.json"
    real = emulator_provision("https://cloud.example")  # a real board: https, with its CA
    real["ca_cert"] = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    prov.write_text(json.dumps(real))
    out = subprocess.run([str(ROOT / "flash.sh"), "--port", "/dev/ttyUSB9", "--board",
                          "esp32-generic", "--provision", str(prov), "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "mpremote connect /dev/ttyUSB9 romfs query"
    text = out.stdout
    rom = text.index("# when it finds a ROM partition the image fits in:")
    fs = text.index("# else (stock firmware):")
    # ROMFS: the image deployed, no app file copied, the ROM's files and image verified.
    deploy, fallback = text[rom:fs], text[fs:]
    assert "\nmpremote connect /dev/ttyUSB9 romfs deploy " in deploy
    assert ".romfs + exec" in deploy and ":app/" not in deploy and ":board.json" in deploy
    assert "/rom/app/meter.mpy" in deploy
    # The fallback: today's copy onto the filesystem.
    assert ":app/meter.mpy" in fallback and "romfs" not in fallback
    assert not os.path.exists("/dev/ttyUSB9")
    # The commands name files that are there: they can be run.
    built = text.split("# the files these commands copy are in ")[1].split(" ")[0]
    assert (Path(built) / "board.json").is_file() and str(built) in deploy
    import shutil

    shutil.rmtree(built)


@pytest.mark.slow
def test_a_board_busy_at_the_first_knock_answers_the_one_more_try(board):
    """A board that answers nothing when flash.sh first knocks (its interpreter frozen
    for longer than mpremote waits, as a chip caught restarting) is tried once more."""
    board.wait_output(b">>> ", timeout=30)  # a blank board: at the REPL
    out = io.StringIO()
    f = Flasher(board.serial_port, out=out)
    assert board._proc is not None
    pid = board._proc.pid
    os.kill(pid, signal.SIGSTOP)
    thaw = threading.Timer(12, os.kill, (pid, signal.SIGCONT))
    thaw.start()
    try:
        assert f.device_chip()[0] == "linux"
    finally:
        thaw.cancel()
        with contextlib.suppress(ProcessLookupError):  # a soft reset since: a new process
            os.kill(pid, signal.SIGCONT)
    assert "no REPL answered (restarting?); trying once more" in out.getvalue()


def _tail(board: Board) -> str:
    """The end of what the board wrote: why an mpremote call found no REPL."""
    return "\nboard's serial output, last 1500 bytes:\n" + board.transcript()[-1500:].decode(
        errors="replace")


def _flash_sh(*args: str) -> subprocess.CompletedProcess[str]:
    """flash.sh as a person runs it from a script: no terminal on stdin."""
    return subprocess.run([str(ROOT / "flash.sh"), *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_flash_sh_keeps_the_board_profile_refuses_the_wrong_chip_and_guards_erase(board,
                                                                                   tmp_path):
    prov, new = tmp_path / "p.json", tmp_path / "new.json"
    first = emulator_provision()
    prov.write_text(json.dumps(first))
    new.write_text(json.dumps(emulator_provision()))
    port = ("--port", board.serial_port)
    out = _flash_sh(*port, "--provision", str(prov))
    assert out.returncode == 2 and "a first flash needs --board" in out.stderr
    out = _flash_sh(*port, "--provision", str(prov), "--board", "esp32-generic")
    assert out.returncode == 2, out.stdout
    assert "board profile esp32-generic is for chip esp32, but the device is linux" in out.stderr
    out = _flash_sh(*port, "--provision", str(prov), "--board", "emulator")
    assert out.returncode == 0, out.stderr
    _brew(board)
    # A re-flash without --board keeps what the device has.
    out = _flash_sh(*port, "--provision", str(prov))
    assert out.returncode == 0, out.stderr + _tail(board)
    assert "keeping the device's board profile (emulator)" in out.stdout
    assert read_counters(board.serial_port, KINDS)["brews_total"] == 1
    # Erasing under the same id would leave the cloud refusing its reports: refused.
    out = _flash_sh(*port, "--provision", str(prov), "--erase-data", "--yes")
    assert out.returncode == 2 and "--erase-data with the device's own id" in out.stderr
    assert f"The cloud keeps all it\nreceived from {first['device_id']}" in out.stderr
    out = _flash_sh(*port, "--provision", str(new), "--erase-data")
    assert out.returncode == 2 and "no terminal to ask on: add --yes" in out.stderr
    assert "Traceback" not in out.stderr
    assert read_counters(board.serial_port, KINDS)["brews_total"] == 1
    out = _flash_sh(*port, "--provision", str(new), "--erase-data", "--yes")
    assert out.returncode == 0, out.stderr
    assert read_counters(board.serial_port, KINDS)["brews_total"] == 0


def _reports(cloud, dev: str, n: int, timeout: float = 40) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cloud.ledger.device(dev)
        if got["reports"] >= n:
            return got
        time.sleep(0.3)
    raise AssertionError(f"{dev}: fewer than {n} reports within {timeout} s: {got}")


@pytest.mark.slow
def test_erase_data_under_a_new_id_then_syncs_cleanly(board, tmp_path):
    """The cloud keeps the old id's history; the erased device reports under its new id from
    the start, its brews reaching the cloud."""
    from brewmeter.runs.demo import cloud_for

    old, new = emulator_provision(), emulator_provision()
    with cloud_for(old, report_delay_s=5) as cloud:
        cloud.ledger.add_device(new["device_id"], new["key"])
        cloud.ledger.set_config(new["device_id"], {"report_delay_s": 5})  # a brew, then a report
        new["cloud_url"] = cloud.url
        (tmp_path / "old.json").write_text(json.dumps(old))
        (tmp_path / "new.json").write_text(json.dumps(new))
        out = _flash_sh("--port", board.serial_port, "--board", "emulator", "--provision",
                        str(tmp_path / "old.json"))
        assert out.returncode == 0, out.stderr
        before = _reports(cloud, old["device_id"], 1)
        out = _flash_sh("--port", board.serial_port, "--provision", str(tmp_path / "new.json"),
                        "--erase-data", "--yes")
        assert out.returncode == 0, out.stderr
        _reports(cloud, new["device_id"], 1)
        _brew(board)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            got = cloud.ledger.device(new["device_id"])
            if got["counters"].get("brews_total") == 1:
                break
            time.sleep(0.5)
        assert got["counters"].get("brews_total") == 1, got
        kept = cloud.ledger.device(old["device_id"])  # the old id's history, as it was
        assert kept["reports"] >= before["reports"] and kept["last_seq"] is not None


def _app_file(board: Board) -> str:
    out = subprocess.run([unixport.tool("mpremote"), "connect", board.serial_port, "exec",
                          "import os, app.run; print(app.run.__file__, 'app' in os.listdir())"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


@pytest.mark.slow
def test_flash_to_romfs_then_a_board_without_a_rom_partition(tmp_path):
    image, prov = tmp_path / "flash.img", emulator_provision()
    # Stock firmware (no ROM partition): the app goes onto the filesystem, and its bytecode
    # into the heap: more than the emulator profile's budget, so this board gets the
    # worst moment's measured need (app_peak_heap_fs_bytes) and some room.
    with Board(image, board_profile="emulator", rom=0, heap=160 * 1024) as b:
        out = io.StringIO()
        assert Flasher(b.serial_port, out=out).flash("emulator", prov) == "filesystem"
        assert "no ROMFS partition: No ROMFS partitions available; copying" in out.getvalue()
        assert _app_file(b) == "app/run.mpy True"
        f = Flasher(b.serial_port, out=out)
        f.restart()
        _brew(b)
        assert read_counters(b.serial_port, KINDS)["brews"]["espresso"] == 1
    # Firmware with one: the app is deployed as a ROMFS image and imported from /rom, the
    # filesystem's copy (which would come first on sys.path) removed, the counters kept. The
    # same heap: the filesystem's app must start (and be stopped by mpremote) first; in the
    # emulator profile's budget it runs out at boot, at a point that moves with the code.
    with Board(image, board_profile="emulator", heap=160 * 1024) as b:
        out = io.StringIO()
        f = Flasher(b.serial_port, out=out)
        assert f.flash("emulator", prov) == "romfs"
        assert "ROMFS partition of 131072 bytes: deploying the app as a" in out.getvalue()
        assert _app_file(b) == "/rom/app/run.mpy False"
        assert read_counters(b.serial_port, KINDS)["brews"]["espresso"] == 1
        rom = b.rom_image.stat().st_mtime_ns
        assert f.flash("emulator", prov) == "romfs"  # unchanged: the ROM is not rewritten
        assert "already holds this image: kept" in out.getvalue()
        # (The data partition may see a write: the stop for flashing is an app_stopped fault.)
        assert b.rom_image.stat().st_mtime_ns == rom
        assert read_counters(b.serial_port, KINDS)["brews_total"] == 1
        # Verification compares the ROM partition with the image, byte for byte.
        with tempfile.TemporaryDirectory() as d:
            other = Path(d) / "other.romfs"
            other.write_bytes(b.rom_image.read_bytes()[:1000].replace(b"app", b"abc"))
            with pytest.raises(FlashError, match="ROM partition did not read back"):
                f.verify({}, other)


@pytest.mark.slow
def test_errors_are_clear(board, tmp_path):
    with pytest.raises(FlashError, match="no such port"):
        Flasher("/dev/ttyNOPE").flash("emulator", emulator_provision())
    import serial

    with serial.Serial(board.serial_port, exclusive=True), pytest.raises(
            FlashError, match="port busy"):
        Flasher(board.serial_port).flash("emulator", emulator_provision())
    # A pty with nothing MicroPython behind it.
    master, slave = os.openpty()
    try:
        with pytest.raises(FlashError, match="MicroPython"):
            Flasher(os.ttyname(slave)).flash("emulator", emulator_provision())
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("field, value, words", [
    ("key", "abc", "64 hex digits"),
    ("cloud_url", "ftp://x", "http"),
    ("service_pin", "12", "6-8 digits"),
    ("service_pin", "2468", "6-8 digits"),
    ("service_pin", 246810, "a string of 6-8 digits"),  # an integer could never match
    ("colour", 1, "unknown field"),
    ("lock", "yes", "true .* or false"),
    ("key_id", "k 2", "the key's id"),
    ("key_id", 2, "the key's id"),
])
def test_bad_provisioning_names_the_field(field, value, words):
    p = emulator_provision()
    p[field] = value
    with pytest.raises(FlashError, match=f"field '{field}'.*{words}"):
        check_provision(p, "p.json")


def test_a_real_board_needs_an_https_cloud():
    with pytest.raises(FlashError, match="cloud_url.*https:// on a real board"):
        check_provision(emulator_provision(), "p.json", "esp32-generic")
    check_provision(emulator_provision(), "p.json", "emulator")  # the emulator may use http


def test_https_needs_a_ca_certificate():
    p = emulator_provision("https://cloud.example")
    with pytest.raises(FlashError, match="ca_cert"):
        check_provision(p, "p.json")
    with pytest.raises(FlashError, match="ca_cert.*not a file name .ca.pem.*--ca-cert FILE"):
        check_provision({**p, "ca_cert": "ca.pem"}, "p.json")


def test_a_provisioning_over_what_the_device_reads_at_boot_is_refused():
    from brewmeter.flashfiles import device_file

    p = emulator_provision("https://cloud.example")
    pem = "-----BEGIN CERTIFICATE-----\n" + "A" * 64 + "\n-----END CERTIFICATE-----\n"
    chain = pem * 60  # a few KB: a real chain fits
    assert len(device_file(check_provision({**p, "ca_cert": chain}, "p.json"))) > 4096
    with pytest.raises(FlashError, match=r"^p\.json: \d+ bytes .*over the 8192 it reads"):
        check_provision({**p, "ca_cert": pem * 120}, "p.json")


def test_mpy_version_mismatch_is_refused(board, monkeypatch):
    monkeypatch.setattr(flasher, "mpy_cross_version", lambda: (5, 0))
    with pytest.raises(FlashError, match="bytecode v6.* mpy-cross makes v5.0"):
        Flasher(board.serial_port).flash("emulator", emulator_provision())


@pytest.mark.slow
def test_flash_sh_emulator_shows_it_counting():
    """The quickstart, at a terminal: it counts, then keeps the board and the cloud up for
    the web console until Enter, its tokens in files of their own (never printed)."""
    import urllib.request

    master, slave = os.openpty()
    proc = subprocess.Popen([str(ROOT / "flash.sh"), "--emulator"], stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    try:
        assert proc.stdout is not None
        out, end = "", time.monotonic() + 300
        while "Enter stops them" not in out:  # input()'s prompt: no newline after it
            assert proc.poll() is None and time.monotonic() < end, out
            if select.select([proc.stdout], [], [], 1)[0]:
                out += os.read(proc.stdout.fileno(), 4096).decode()
        assert "all counted, saved and synced" in out and "brews_total" in out
        # The web console's address, and where the machine owner's token is to sign in with.
        m = re.search(r"^web console: (http://127\.0\.0\.1:\d+)/console/ \(sign in with the "
                      r"owner token in (\S+): machine (bm-[\w-]+); the operator's token is in "
                      r"(\S+);", out, re.M)
        assert m, out
        url, owner_file, dev, operator_file = m.groups()
        tokens = [Path(owner_file).read_text().strip(), Path(operator_file).read_text().strip()]
        for f in (owner_file, operator_file):
            assert Path(f).stat().st_mode & 0o777 == 0o600
        assert not any(t in out for t in tokens)
        req = urllib.request.Request(f"{url}/v1/devices/{dev}",
                                     headers={"Authorization": f"Bearer {tokens[0]}"})
        with urllib.request.urlopen(req, timeout=10) as r:  # the owner sees the machine
            assert json.loads(r.read())["counters"]["brews_total"] >= 3
        os.write(master, b"\n")
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + rest + err
        assert not any(t in rest + err for t in tokens)
        assert not Path(owner_file).exists()  # gone with the cloud
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@pytest.mark.slow
def test_board_reports_to_the_cloud_over_tls_with_the_provisioned_ca(board):
    """The firmware's own sync, on MicroPython, to the emulated cloud over TLS on loopback:
    the server is verified against the CA flash.sh provisioned."""
    from brewmeter.runs.demo import cloud_for

    prov = emulator_provision()
    with cloud_for(prov, tls=True) as cloud:
        assert cloud.url.startswith("https://") and "BEGIN CERTIFICATE" in prov["ca_cert"]
        Flasher(board.serial_port).flash("emulator", prov)
        end = time.monotonic() + 30
        while time.monotonic() < end and not cloud.ledger.device(prov["device_id"])["reports"]:
            time.sleep(0.3)
        got = cloud.ledger.device(prov["device_id"])
    assert got["reports"] >= 1 and got["counters"]["boots"] == 1
    assert b"MemoryError" not in board.transcript()


@pytest.mark.slow
def test_a_scripted_scenario_plays_on_the_board_as_in_the_harness(board):
    """The same Script that drives the CPython core drives the emulated board."""
    from app.meter import Meter
    from brewmeter.profiles import load_profile
    from brewmeter.scenario import Script, play, play_board

    profile = load_profile("emulator")
    Flasher(board.serial_port).flash("emulator", emulator_provision())
    script = Script(profile).brew("lungo", 110, 8.6).rinse(1.5, "espresso", 20)
    script.bounce("hot_water", 15).settle()
    meter = Meter(profile)
    play(meter, script.events)
    play_board(board.control(), profile, script.events)
    time.sleep(0.3)
    got = read_counters(board.serial_port, KINDS)
    assert got["brews"] == {"espresso": 0, "hot_water": 0, "lungo": 1} == {
        k: meter.c.brews[i] for i, k in enumerate(profile.kinds)}
    assert got["rinses"] == meter.c.rinses == 1
    assert abs(got["water_ml"] - meter.c.water_ml) <= 1


@pytest.mark.slow
def test_the_board_dates_brews_once_ntp_answers(board):
    """NTP over UDP from the board, then a brew billed to today's date in the cloud."""
    import asyncio
    import struct
    import threading
    from datetime import UTC, datetime

    from brewmeter.runs.demo import cloud_for

    loop = asyncio.new_event_loop()

    class Ntp(asyncio.DatagramProtocol):
        def connection_made(self, transport):  # noqa: ANN001, ANN201
            self.t = transport

        def datagram_received(self, data, addr):  # noqa: ANN001, ANN201
            reply = bytearray(48)
            reply[0] = 0x1C  # v3, server
            reply[1] = 2  # stratum 2: synchronised
            reply[24:32] = data[40:48]  # the origin: our query's transmit timestamp
            reply[40:44] = struct.pack("!I", int(time.time()) + 2208988800)
            self.t.sendto(bytes(reply), addr)

    transport, _ = loop.run_until_complete(
        loop.create_datagram_endpoint(Ntp, local_addr=("127.0.0.1", 0)))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        prov = emulator_provision()
        prov["ntp"] = f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
        with cloud_for(prov, report_delay_s=5) as cloud:
            Flasher(board.serial_port).flash("emulator", prov)
            _brew(board, "lungo", 8.6)
            end = time.monotonic() + 30
            today = datetime.now(UTC).date()
            days = []
            while time.monotonic() < end and not days:
                days = cloud.ledger.days(prov["device_id"], today, today)["days"]
                time.sleep(0.5)
    finally:
        loop.call_soon_threadsafe(transport.close)
        loop.call_soon_threadsafe(loop.stop)
    assert days and days[0]["brews_total"] == 1 and not days[0]["estimated"]
