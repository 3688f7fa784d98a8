"""Every mpremote workflow a developer uses on an ESP32, with unmodified mpremote on the
emulated board: connect, exec, eval, run, fs (ls, cat, cp, rm, mkdir, rmdir, sha256sum,
touch, tree), mount and umount, romfs (query, build, deploy), mip install of the firmware
from the repository's package.json, reset, soft-reset, resume and repl."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import time
import tty
from pathlib import Path

import pytest
from brewmeter import unixport
from brewmeter.emulator.board import Board

pytestmark = pytest.mark.board  # every test here runs the emulated board

ROOT = Path(__file__).resolve().parents[1]


def mpremote(board: Board, *args: str, ok: bool = True, cwd: Path | None = None,
             timeout: float = 60) -> str:
    p = subprocess.run([unixport.tool("mpremote"), "connect", board.serial_port, *args],
                       capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if ok:
        assert p.returncode == 0, f"mpremote {args}: {p.stdout}{p.stderr}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    with Board(tmp_path_factory.mktemp("mpremote") / "flash.img",
               board_profile="emulator") as b:
        yield b


def test_exec_eval_run(board, tmp_path):
    assert mpremote(board, "exec", "print(6 * 7)").strip() == "42"
    assert mpremote(board, "eval", "1 + 2").strip() == "3"
    script = tmp_path / "s.py"
    script.write_text("import sys\nprint('ran', sys.implementation.name)\n")
    assert mpremote(board, "run", str(script)).strip() == "ran micropython"


def test_fs_commands(board, tmp_path):
    src = tmp_path / "note.txt"
    src.write_bytes(b"line one\nline two\n")
    mpremote(board, "fs", "mkdir", ":d", "+", "fs", "cp", str(src), ":d/note.txt")
    assert mpremote(board, "fs", "cat", ":d/note.txt") == "line one\nline two\n"
    assert "18 note.txt" in mpremote(board, "fs", "ls", ":d")
    out = mpremote(board, "fs", "sha256sum", ":d/note.txt")
    assert hashlib.sha256(src.read_bytes()).hexdigest() in out
    mpremote(board, "fs", "touch", ":d/empty")
    tree = mpremote(board, "fs", "tree", ":d")
    assert "note.txt" in tree and "empty" in tree
    back = tmp_path / "back.txt"
    mpremote(board, "fs", "cp", ":d/note.txt", str(back))
    assert back.read_bytes() == src.read_bytes()
    mpremote(board, "fs", "rm", ":d/note.txt", "+", "fs", "rm", ":d/empty", "+",
             "fs", "rmdir", ":d")
    assert "d/" not in mpremote(board, "fs", "ls", ":")


def test_mount_and_umount(board, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    data = bytes(range(256)) * 4  # every byte value, "\n" and "\r" included
    (host / "bin.dat").write_bytes(data)
    (host / "lib.py").write_text("X = 'from the laptop'\n")
    code = ("import hashlib, binascii, lib\n"
            "print(lib.X, binascii.hexlify(hashlib.sha256(open('bin.dat', 'rb').read())"
            ".digest()).decode())\n"
            "open('out.dat', 'wb').write(bytes(range(256)) * 3)\n"
            "with open('lines.txt', 'w') as f:\n"
            "    f.write('a\\nb\\r\\n' * 10)\n")
    out = mpremote(board, "mount", str(host), "exec", code, "+", "umount", "+", "exec",
                   "import os; print(os.getcwd(), 'remote' in os.listdir('/'))")
    assert f"from the laptop {hashlib.sha256(data).hexdigest()}" in out
    assert (host / "out.dat").read_bytes() == bytes(range(256)) * 3  # written byte for byte
    assert (host / "lines.txt").read_bytes() == b"a\nb\r\n" * 10
    assert out.rstrip().endswith("/ False")  # unmounted, back at the board's own /


def test_romfs_build_query_deploy(board, tmp_path):
    src = tmp_path / "romsrc"
    src.mkdir()
    (src / "inrom.py").write_text("WHERE = 'rom'\n")
    image = tmp_path / "app.romfs"
    subprocess.run([unixport.tool("mpremote"), "romfs", "-o", str(image), "build", str(src)],
                   check=True, capture_output=True)
    assert image.read_bytes()[:3] == b"\xd2\xcd\x31"
    assert "ROMFS image deployed" in mpremote(board, "romfs", "deploy", str(image))
    out = mpremote(board, "romfs", "query")
    assert "ROMFS0 partition has size 131072 bytes" in out and "ROMFS image size: " in out
    assert mpremote(board, "exec", "import inrom; print(inrom.WHERE, inrom.__file__)"
                    ).strip() == "rom /rom/inrom.mpy"


@pytest.mark.slow
def test_mip_installs_the_firmware_from_package_json(board):
    pkg = json.loads((ROOT / "package.json").read_text())
    firmware = sorted(p.relative_to(ROOT / "firmware").as_posix()
                      for p in (ROOT / "firmware").rglob("*.py") if p.name != "manifest.py")
    assert sorted(dev for dev, _ in pkg["urls"]) == firmware  # every file, nothing else
    out = mpremote(board, "mip", "install", "--target", "/", "package.json", cwd=ROOT)
    assert out.rstrip().endswith("Done")
    got = mpremote(board, "exec", "import hashlib, binascii\n"
                   f"for p in {firmware!r}:\n"
                   "    print(p, binascii.hexlify(hashlib.sha256(open(p, 'rb').read())"
                   ".digest()).decode())")
    for dev, src in pkg["urls"]:
        assert f"{dev} {hashlib.sha256((ROOT / src).read_bytes()).hexdigest()}" in got
    assert mpremote(board, "exec", "import app; print(app.VERSION)").strip() == pkg["version"]
    mpremote(board, "exec", "import os\nfor n in os.listdir('app'): os.remove('app/' + n)\n"
             "os.rmdir('app'); os.remove('boot.py'); os.remove('main.py')")


def test_reset_soft_reset_and_resume(board):
    boots = board.boots
    mpremote(board, "reset")  # a soft reset into the raw REPL, then machine.reset()
    board.wait_boot(boots + 2)
    assert board.command({"cmd": "status"})["reset_cause"] == "HARD_RESET"
    mpremote(board, "exec", "x = 42")
    assert mpremote(board, "resume", "eval", "x").strip() == "42"  # no soft reset between
    assert "NameError" in mpremote(board, "exec", "print(x)", ok=False)  # mpremote resets
    start = board.transcript_end()
    mpremote(board, "exec", "y = 1", "+", "soft-reset", "+", "eval", "'y' in globals()")
    assert b"MPY: soft reboot" in board.transcript(start)


def test_repl(board):
    # mpremote's repl needs a terminal: give it a pty, type, and leave with Ctrl-].
    pid, fd = pty.fork()
    if pid == 0:  # a raw terminal from the start: Ctrl-C is a byte, even before mpremote
        tty.setraw(0)  # sets raw mode itself
        os.execv(unixport.tool("mpremote"), ["mpremote", "connect", board.serial_port, "repl"])
    seen = b""

    def until(pattern: bytes, timeout: float = 15) -> None:
        nonlocal seen
        end = time.monotonic() + timeout
        while pattern not in seen:
            assert time.monotonic() < end, f"no {pattern!r} in {seen!r}"
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break

    try:
        until(b"Use Ctrl-] or Ctrl-x to exit this shell")
        os.write(fd, b"\r\x03")
        until(b">>> ")
        os.write(fd, b"print(6 * 7)\r")
        until(b"42\r\n>>> ")
        os.write(fd, b"\x1d")  # Ctrl-]
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        os.close(fd)
