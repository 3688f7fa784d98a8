"""The emulated board's ROM partition, driven by unmodified `mpremote romfs`: query, deploy,
the image mounted at /rom with /rom and /rom/lib on sys.path after a reset, kept in the
image's ROM file across a power cut, and left out of the firmware's heap."""

from __future__ import annotations

import subprocess

import pytest
from brewmeter import unixport
from brewmeter.emulator.board import Board

pytestmark = pytest.mark.board  # every test here runs the emulated board


def mpremote(board: Board, *args: str, ok: bool = True, timeout: float = 60) -> str:
    p = subprocess.run([unixport.tool("mpremote"), "connect", board.serial_port, *args],
                       capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, f"mpremote {args}: {p.stdout}{p.stderr}"
    return p.stdout + p.stderr


@pytest.fixture
def board(tmp_path):
    with Board(tmp_path / "flash.img", board_profile="emulator") as b:
        yield b


def test_query_deploy_mount_and_import_from_rom(board, tmp_path):
    out = mpremote(board, "romfs", "query")
    assert "ROMFS0 partition has size 131072 bytes (32 blocks of 4096 bytes each)" in out
    assert "Not a valid ROMFS" in out  # erased flash
    src = tmp_path / "romsrc"
    (src / "lib").mkdir(parents=True)
    (src / "greet.py").write_text("def hello():\n    return 'hello from rom'\n")
    (src / "lib" / "helper.py").write_text("X = 42\n")
    out = mpremote(board, "romfs", "deploy", str(src))
    assert "ROMFS image deployed" in out
    out = mpremote(board, "romfs", "query")
    assert "ROMFS image size:" in out and "Not a valid" not in out
    # mpremote soft-resets first: the new image is mounted at boot, as py/runtime.c does.
    out = mpremote(board, "exec", "import sys, os, greet, helper; print(sys.path); "
                   "print(sorted(os.listdir('/rom'))); print(greet.__file__, greet.hello(), "
                   "helper.X)")
    assert "['', '.frozen', '/rom', '/rom/lib', '/lib']" in out
    assert "['greet.mpy', 'lib']" in out  # mpremote compiled it with mpy-cross
    assert "/rom/greet.mpy hello from rom 42" in out
    # Read-only, as on the device.
    out = mpremote(board, "exec", "open('/rom/x', 'w')", ok=False)
    assert "OSError" in out
    # The partition is flash: it survives a power cut.
    board.control().power_cut()
    assert "hello from rom" in mpremote(board, "exec", "import greet; print(greet.hello())")
    assert board.rom_image.stat().st_size == 131072


def test_rom_bytes_are_left_out_of_the_heap(tmp_path):
    def free(rom: int) -> int:
        with Board(tmp_path / f"f{rom}.img", board_profile="emulator", rom=rom) as b:
            out = mpremote(b, "exec", "import gc; gc.collect(); print(gc.mem_free())")
            return int(out.split()[-1])

    with_rom, without = free(131072), free(0)
    assert abs(with_rom - without) < 2048, (with_rom, without)


def test_a_board_without_a_rom_partition(tmp_path):
    with Board(tmp_path / "flash.img", board_profile="emulator", rom=0) as b:
        assert "No ROMFS partitions available" in mpremote(b, "romfs", "query")
        src = tmp_path / "src"
        src.mkdir()
        (src / "m.py").write_text("x = 1\n")
        out = mpremote(b, "romfs", "deploy", str(src), ok=False)
        assert "ROMFS0 partition not found" in out
        assert not b.rom_image.exists()
        # Nor the update's slots: esp32.Partition finds the littlefs partition alone.
        out = mpremote(b, "exec", "from esp32 import Partition as P\n"
                       "print([p.info()[4] for p in P.find(P.TYPE_DATA)])")
        assert out.strip() == "['vfs']"
        assert not any(p.exists() for p in b.slot_images.values())


def test_an_image_too_big_for_the_partition_is_refused(tmp_path):
    with Board(tmp_path / "flash.img", board_profile="emulator", rom=8192) as b:
        img = tmp_path / "big.romfs"
        src = tmp_path / "src"
        src.mkdir()
        (src / "blob.bin").write_bytes(bytes(range(256)) * 64)
        subprocess.run([unixport.tool("mpremote"), "romfs", "-o", str(img), "build", str(src)],
                       check=True, capture_output=True)
        out = mpremote(b, "romfs", "deploy", str(img), ok=False)
        assert "too big" in out
        assert b.rom_image.read_bytes() == b"\xff" * 8192  # nothing written
