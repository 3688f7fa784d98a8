"""The emulated ESP32 (brewmeter.emulator) as its users meet it: real mpremote and pyserial on its
pseudo-terminal, and the control address. Every wait has a timeout; the file takes seconds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
from brewmeter import unixport
from brewmeter.emulator.board import Board
from brewmeter.emulator.common import RAW_BANNER, SOFT_REBOOT, BoardError
from brewmeter.emulator.control import BoardControl
from brewmeter.emulator.process import heap_reserve
from brewmeter.onmicropython.esp32.machineconsts import PWRON_RESET

pytestmark = pytest.mark.board  # every test here runs the emulated board

# A main.py that shows what firmware sees through machine: it prints a line whenever the
# espresso input (GPIO 1 on the emulator profile), the flow counter (GPIO 10) or the
# lungo pin's IRQ count (GPIO 2) changes.
MAIN_PY = """\
import machine, time
print("ready cause=%d" % machine.reset_cause())
btn = machine.Pin(1, machine.Pin.IN)
flow = machine.Counter(0, machine.Pin(10, machine.Pin.IN), edge=machine.Counter.RISING)
edges = [0]
def edge(pin):
    edges[0] += 1
lungo = machine.Pin(2, machine.Pin.IN)
lungo.irq(edge, machine.Pin.IRQ_RISING)
total = 0
last = None
while True:
    total += flow.value(0)
    now = (btn.value(), total, edges[0])
    if now != last:
        print("state btn=%d flow=%d irq=%d" % now)
        last = now
    time.sleep_ms(10)
"""


@pytest.fixture
def board(main_py_board):
    b = main_py_board(MAIN_PY)
    with b:
        b.wait_output(b"ready cause=1")
        yield b
    assert b._proc is not None and b._proc.poll() is not None  # nothing left running


def mpremote(board: Board, *args: str, timeout: float = 20) -> str:
    p = subprocess.run([unixport.tool("mpremote"), "connect", board.serial_port, *args],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"mpremote {args}: {p.stdout}{p.stderr}"
    return p.stdout


def read_until(port: serial.Serial, pattern: bytes, timeout: float = 10) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while pattern not in data:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {pattern!r} in {data!r}")
        data += port.read(port.in_waiting or 1)
    return data


def test_mpremote_files_exec_run_and_soft_reset(board, tmp_path):
    src = tmp_path / "note.txt"
    src.write_text("espresso, no sugar\n")
    out = mpremote(board, "fs", "cp", str(src), ":note.txt", "+", "fs", "ls")
    assert "note.txt" in out and "main.py" in out and "board.json" in out
    assert mpremote(board, "fs", "cat", "note.txt") == "espresso, no sugar\n"
    assert mpremote(board, "exec", "print(1+1)").strip() == "2"
    # mpremote soft-resets into the raw REPL on each connect: twice in a row works too.
    assert mpremote(board, "exec", "import os; print(sorted(os.listdir('/')))").strip() == \
        "['board.json', 'main.py', 'note.txt']"
    script = tmp_path / "script.py"
    script.write_text("import sys\nprint('ran', sys.platform, 6 * 7)\n")
    assert mpremote(board, "run", str(script)).strip() == "ran linux 42"
    before = board.transcript_end()
    mpremote(board, "soft-reset")
    board.wait_output(b">>> ", start=before)  # mpremote leaves with Ctrl-B
    assert board.command({"cmd": "status"})["raw_repl"] is False
    # The raw REPL's soft reset prints what ports/esp32 + pyexec print, and skips main.py.
    log = board.transcript()
    assert b"OK\r\n" + SOFT_REBOOT + RAW_BANNER + b">" in log
    assert log.count(b"ready cause") == 1
    assert b"\x05A\x01" not in log and b"R\x01" in log  # mpremote used raw-paste mode


def test_pyserial_ctrl_c_interrupts_main_and_ctrl_d_reboots(board):
    with serial.Serial(board.serial_port, 115200, timeout=0.1) as port:
        port.write(b"\x03")
        out = read_until(port, b">>> ")
        assert b'File "main.py"' in out and b"KeyboardInterrupt: \r\n" in out
        assert b'Type "help()" for more information.\r\n>>> ' in out
        assert b"board_launch" not in out  # the launcher's own frame is not shown
        port.write(b"print(6 * 7)\r")
        assert b"\r\n42\r\n>>> " in read_until(port, b"42\r\n>>> ")
        port.write(b"\x04")  # Ctrl-D at the friendly REPL: soft reboot, main.py runs again
        out = read_until(port, b"ready cause=5\r\n")
        assert out.startswith(b"\r\n" + SOFT_REBOOT)
        port.write(b"\x03")
        read_until(port, b">>> ")
        port.write(b"import machine; machine.soft_reset()\r")
        read_until(port, SOFT_REBOOT + b"ready cause=5\r\n")


# Allocates without pause, collecting every 512 bytes, and reads a pin as the app's sensor
# loop does; each Ctrl-C is caught and the heap tried.
BUSY_GC_PY = """\
import gc, machine
gc.threshold(512)
pin = machine.Pin(1, machine.Pin.IN)
print("ready")
n = 0
while n < 30:
    try:
        while True:
            junk = [bytearray(64) for _ in range(16)]
            pin.value()
    except KeyboardInterrupt:
        n += 1
        junk = bytearray(1000)  # MemoryError if the interrupt left the heap locked
        print("interrupted", n)
print("heap ok")
"""


def test_ctrl_c_never_lands_inside_a_garbage_collection(main_py_board):
    """The unix port raises SIGINT's KeyboardInterrupt wherever it lands, and one landing
    in a collection leaves the heap locked for good; on an ESP32 the UART schedules it. The
    board raises Ctrl-C at the next pin read instead: 30 of them into code that is
    collecting most of the time, and the heap still works."""
    b = main_py_board(BUSY_GC_PY)
    with b, serial.Serial(b.serial_port, 115200, timeout=0.1) as port:
        b.wait_output(b"ready")
        for n in range(1, 31):
            port.write(b"\x03")
            read_until(port, b"interrupted %d\r\n" % n, timeout=5)
        b.wait_output(b"heap ok", timeout=5)
        assert b"MemoryError" not in b.transcript()


def test_filesystem_survives_soft_reset_reset_and_power_cut(board):
    # Left open, as one-liners do: the soft reset's heap sweep closes it, as on the device.
    mpremote(board, "exec", "open('keep.txt', 'w').write('brews=1')")
    mpremote(board, "exec", "with open('big.bin', 'wb') as f: f.write(bytes(9000))")
    # Every mpremote call starts with a soft reset.
    assert mpremote(board, "exec", "print(open('keep.txt').read())").strip() == "brews=1"
    ctl = board.control()
    try:
        for cause in ("reset", "power_cut"):
            before = board.transcript_end()
            reply = ctl.call(cause)
            assert reply["reset_cause"] == (PWRON_RESET if cause == "power_cut" else 2)
            board.wait_output(b"ready cause=%d" % reply["reset_cause"], start=before)
            assert mpremote(board, "exec", "print(open('keep.txt').read())").strip() == "brews=1"
        wear = ctl.wear()
        assert wear["programs"] > 0 and wear["bytes_programmed"] >= wear["programs"]
        assert wear["erases"] >= 1 and wear["max_block_erases"] >= 1
    finally:
        ctl.close()


def test_reset_causes(board):
    with board.control() as ctl, serial.Serial(board.serial_port, timeout=0.1) as port:
        ctl.reset()
        read_until(port, b"ready cause=2\r\n")  # HARD_RESET
        port.write(b"\x03")
        read_until(port, b">>> ")
        port.write(b"\x04")
        read_until(port, b"ready cause=5\r\n")  # SOFT_RESET
        ctl.power_cut()
        read_until(port, b"ready cause=1\r\n")  # PWRON_RESET
        port.write(b"\x03")
        read_until(port, b">>> ")
        port.write(b"machine.reset()\r")  # machine is in main.py's globals
        read_until(port, b"ready cause=2\r\n")
        assert ctl.status()["reset_cause"] == "HARD_RESET"


def test_inputs_and_flow_pulses_reach_machine_pin_and_counter(board):
    with board.control() as ctl, serial.Serial(board.serial_port, timeout=0.1) as port:
        assert ctl.press("espresso") == {"ok": True, "pin": 1, "level": 1}
        read_until(port, b"state btn=1 flow=0 irq=0")
        ctl.pulses(1925)  # the profile's flow pin
        read_until(port, b"state btn=1 flow=1925 irq=0")
        ctl.release(1)
        read_until(port, b"state btn=0 flow=1925 irq=0")
        ctl.press("lungo")  # a rising edge on GPIO 2 runs main.py's IRQ handler
        ctl.release("lungo")
        ctl.pulses(3, pin=2)  # three more rising edges
        read_until(port, b"state btn=0 flow=1925 irq=4")
        pins = ctl.pins()
        assert pins["inputs"]["espresso"] == {"pin": 1, "pressed": False}
        assert pins["pulses"] == {"10": 1925, "2": 3}
        with pytest.raises(BoardError, match="unknown input"):
            ctl.press("cappuccino")
        with pytest.raises(BoardError, match="unknown command"):
            ctl.call("brew")


def test_watchdog_not_fed_resets_the_board(board):
    with serial.Serial(board.serial_port, timeout=0.1) as port:
        port.write(b"\x03")
        read_until(port, b">>> ")
        port.write(b"w = machine.WDT(timeout=300); w.feed()\r")
        read_until(port, b"ready cause=3\r\n", timeout=5)  # WDT_RESET after 0.3 s unfed
    assert board.command({"cmd": "status"})["wdt_ms"] is None  # a hard reset stops it


def test_armed_power_cut_tears_a_write_and_the_board_recovers(board):
    mpremote(board, "exec", "with open('a.txt', 'w') as f: f.write('old')")
    with board.control() as ctl:
        ctl.power_cut(after_ops=1, tear=True)
    before = board.transcript_end()
    with serial.Serial(board.serial_port, timeout=0.1) as port:
        port.write(b"\x03")
        read_until(port, b">>> ")
        port.write(b"with open('a.txt', 'w') as f: f.write('new contents')\r\r")
        read_until(port, b"ready cause=1\r\n")  # the board died mid-write and powered up
    assert b"Traceback" not in board.transcript(before)  # it died, it raised nothing
    # littlefs is power-safe: the file is whole, old or new.
    assert mpremote(board, "exec", "print(open('a.txt').read())").strip() in ("old",
                                                                             "new contents")


# Says the heap's pool (what gc can hand out) and the heap it holds before firmware.
POOL_PY = """\
import gc
gc.collect()
print("POOL %d" % (gc.mem_free() + gc.mem_alloc()))
"""


@pytest.mark.parametrize("rom", [None, 0], ids=["rom", "no-rom"])
def test_firmware_gets_its_heap_whatever_the_harness_takes(tmp_path, rom):
    """The board adds the harness's share and the ROM's buffer, measured on the interpreter
    in use, to -X heapsize: firmware's pool is what `micropython -X heapsize=HEAP` has."""
    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "main.py").write_text(POOL_PY)
    with Board(tmp_path / "flash.img", firmware_dir=fw, board_profile="emulator",
               rom=rom) as b:
        end = b.wait_output(b"POOL ", timeout=10)
        b.wait_output(b"\n", start=end, timeout=5)
        pool = int(b.transcript(end).split()[0])
        st = b.command({"cmd": "status"})
    alone = int(unixport.run(["-X", f"heapsize={st['heap']}", "-c", POOL_PY]).split()[1])
    assert st["heap"] == b.profile["heap_bytes"]  # the profile's budget for firmware
    # Within 1 KiB, not exactly: MicroPython's GC scans the C stack conservatively, so what a
    # collection keeps shifts by a few hundred bytes with the process's stack layout (its
    # environment and arguments: under pytest 600 bytes more than in a plain run).
    assert abs(pool - st["harness_heap"] - st["rom_heap"] - alone) <= 1024
    probe = heap_reserve(unixport.micropython(), st["rom_bytes"])
    assert st["heapsize"] == st["heap"] + probe["reserve"]
    # This boot's own figures, measured: within that noise of the probe's.
    assert abs(st["harness_heap"] - probe["harness_heap"]) <= 1024
    assert abs(st["rom_heap"] - probe["rom_heap"]) <= 1024
    assert st["rom_bytes"] < st["rom_heap"]  # the bytes, with the modules that serve them


def test_status_names_the_interpreter_brewmeter_micropython_gives(tmp_path, monkeypatch):
    link = tmp_path / "my-micropython"  # a developer's build: here the wheel's, renamed
    link.symlink_to(unixport.tool("micropython"))
    monkeypatch.setenv(unixport.ENV, str(link))
    with Board(tmp_path / "flash.img") as b:
        st = b.command({"cmd": "status"})
        pid = st["pid"]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            # (a script's interpreter comes first: the wheel's is a Python script)
            assert str(link).encode() in f.read().split(b"\0")[:2]  # what the board runs
    who = st["interpreter"]
    assert who["path"] == str(link) and who["pointer_bits"] in (32, 64)
    assert who["version"] == unixport.interpreter()["version"]
    assert who["version"].startswith("1.") and "MicroPython" in who["version"]


def test_blank_image_gets_initial_setup_and_stop_leaves_nothing(tmp_path):
    image = tmp_path / "blank.img"
    with Board(image) as b:
        b.wait_output(b'Type "help()" for more information.\r\n>>> ')
        assert b.transcript().startswith(b"Performing initial setup\r\n")  # inisetup.py
        pid = b.command({"cmd": "status"})["pid"]
        assert image.stat().st_size == 2 * 1024 * 1024
        assert mpremote(b, "fs", "cat", "boot.py").startswith("# This file is executed")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with b:  # power it up again: the same flash, no setup this time
        b.wait_boot(2)
        assert b.command({"cmd": "status"})["reset_cause"] == "PWRON_RESET"
        assert b.transcript().count(b"Performing initial setup") == 1


async def test_async_board_and_emulate_main_runs_until_sigterm(tmp_path):
    async with Board(tmp_path / "a.img") as b:
        assert Path(b.serial_port).exists() and b.control_address[1] > 0
    # The CLI entry point, in a subprocess so its signal handling is its own.
    code = ("import sys; from brewmeter.emulator.board import emulate_main; "
            "sys.exit(emulate_main(sys.argv[1:]))")
    p = subprocess.Popen([sys.executable, "-c", code, "--image", str(tmp_path / "e.img"),
                          "--heap", "64K"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        port_line = p.stdout.readline()
        control_line = p.stdout.readline()
        assert port_line.startswith("serial port: ") and port_line.strip().endswith(".tty")
        assert os.path.realpath(port_line.split()[-1]).startswith("/dev/pts/")
        with BoardControl(control_line.split()[-1]) as ctl:
            assert ctl.status()["heap"] == 64 * 1024
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


WDT_MAIN_PY = """\
import machine, time
print("ready cause=%d" % machine.reset_cause())
if machine.reset_cause() != machine.WDT_RESET:
    wdt = machine.WDT(timeout=1500)
    print("wdt started")
"""


def test_the_watchdog_behaves_as_the_esp32s(main_py_board):
    """Once started it cannot be stopped: main.py ends, the REPL idles, a soft reset comes
    between, and still the unfed watchdog resets the board; a hard reset stops it."""
    with main_py_board(WDT_MAIN_PY) as b:
        b.wait_output(b"wdt started")
        with serial.Serial(b.serial_port, 115200, timeout=0.1) as port:
            read_until(port, b">>> ")
            port.write(b"\x04")  # soft reset: the watchdog runs on (main.py starts it again)
            read_until(port, b"ready cause=5")
        b.wait_boot(3, timeout=5)  # unfed: reset by the watchdog
        assert b.command({"cmd": "status"})["reset_cause"] == "WDT_RESET"
        b.wait_output(b"ready cause=3")
        assert b.command({"cmd": "status"})["wdt_ms"] is None  # a hard reset stopped it
        time.sleep(2.5)
        assert b.boots == 3  # and nothing started it again


# A main.py that reads the flow counter every 10 ms, as the sensor loop does, and while the
# espresso input is on looks up an IP literal and a host name, in the loop (so a lookup
# that blocks is a gap between two reads).
LOOKUP_PY = """\
import machine, socket, time
flow = machine.Counter(0, machine.Pin(10, machine.Pin.IN), edge=machine.Counter.RISING)
btn = machine.Pin(1, machine.Pin.IN)
print("ready")
while True:
    flow.value(0)
    if btn.value():
        for host in ("127.0.0.1", "localhost"):
            t = time.ticks_ms()
            try:
                socket.getaddrinfo(host, 80)
                r = "answered"
            except OSError as e:
                r = "failed %d" % e.errno
            print("%s %s after %d ms" % (host, r, time.ticks_diff(time.ticks_ms(), t)))
        while btn.value():
            time.sleep_ms(10)
    time.sleep_ms(10)
"""


def test_poll_gap_and_a_dns_that_never_answers(main_py_board):
    def lookups(ctl: BoardControl, port: serial.Serial) -> bytes:
        ctl.press("espresso")
        try:
            seen = b""
            deadline = time.monotonic() + 10
            while not re.search(rb"localhost [^\r]* ms\r\n", seen):
                assert time.monotonic() < deadline, seen
                seen += port.read(port.in_waiting or 1)
            return seen
        finally:
            ctl.release("espresso")
            time.sleep(0.2)  # seen released before the next press

    b = main_py_board(LOOKUP_PY)
    with b, b.control() as ctl, serial.Serial(b.serial_port, timeout=0.1) as port:
        read_until(port, b"ready")
        seen = lookups(ctl, port)
        assert b"127.0.0.1 answered" in seen and b"localhost answered" in seen
        assert ctl.dns(False, hang_ms=500)["hang_ms"] == 500
        ctl.poll_gap()
        seen = lookups(ctl, port)
        assert b"127.0.0.1 answered" in seen  # a literal needs no DNS server
        m = re.search(rb"localhost failed -202 after (\d+) ms", seen)
        assert m and int(m[1]) >= 500, seen  # as lwIP fails on an ESP32, after the wait
        time.sleep(0.1)
        assert ctl.poll_gap() >= 500  # the lookup blocked the loop between two reads
        ctl.reset()  # the DNS stays silent through a reset
        read_until(port, b"ready")
        assert b"localhost failed -202" in lookups(ctl, port)
        ctl.dns(True)
        assert b"localhost answered" in lookups(ctl, port)
        with pytest.raises(BoardError, match="answer must be"):
            ctl.call("dns", answer="no")
