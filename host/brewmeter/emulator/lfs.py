"""littlefs on an emulated NorFlash under CPython (littlefs-python), configured exactly as
MicroPython's `vfs.VfsLfs2` configures littlefs, so one image mounts under both interpreters.

MicroPython's settings (extmod/vfs_lfs.c, extmod/vfs_lfsx.c, init_config) for
`vfs.VfsLfs2(bdev, readsize=32, progsize=32, lookahead=32, mtime=True)`:
read_size 32, prog_size 32, lookahead_size 32 bytes, block_cycles 100,
cache_size min(block_size, 4 * max(read_size, prog_size)) = 128, name_max/file_max/attr_max
left at 0 (littlefs defaults 255 / 2147483647 / 1022), block size and count from the device.
littlefs-python's own defaults differ (read/prog/cache = block size, lookahead 8,
block_cycles -1), and the cache size decides the inline-file limit, so every one is passed.

With mtime=True MicroPython stores each written file's modification time as user attribute 1:
8 bytes, little-endian nanoseconds since 1970. Files without it read fine on both sides.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from littlefs import LittleFS, LittleFSError, UserContext
from littlefs import lfs as lfs_api

from brewmeter.onmicropython.norflash import NorFlash

READ_SIZE = 32
PROG_SIZE = 32
LOOKAHEAD_SIZE = 32
BLOCK_CYCLES = 100
MTIME_ATTR = 1  # LFS_ATTR_MTIME in MicroPython's extmod/vfs_lfs.c
LFS_ERR_IO = -5


def config(flash: NorFlash) -> dict[str, int]:
    """littlefs-python LittleFS/LFSConfig keyword arguments matching MicroPython's VfsLfs2."""
    return {
        "block_size": flash.block_size,
        "block_count": flash.block_count,
        "read_size": READ_SIZE,
        "prog_size": PROG_SIZE,
        "cache_size": min(flash.block_size, 4 * max(READ_SIZE, PROG_SIZE)),
        "lookahead_size": LOOKAHEAD_SIZE,
        "block_cycles": BLOCK_CYCLES,
        "name_max": 255,
        "file_max": 0,
        "attr_max": 0,
    }


class FlashContext(UserContext):
    """littlefs-python's block device callbacks, on a NorFlash (NOR rules, counters, cuts).

    littlefs-python's C callbacks cannot pass a Python exception on (it is printed and
    dropped), so a NorError or PowerCut becomes LFS_ERR_IO for littlefs and waits in `error`;
    the helpers below re-raise it in place of the LittleFSError it caused."""

    def __init__(self, flash: NorFlash) -> None:
        self.flash = flash
        self.error: OSError | None = None

    def _failed(self, e: OSError) -> int:
        self.error = self.error or e
        return LFS_ERR_IO

    def read(self, cfg, block: int, off: int, size: int) -> bytes:
        try:
            return self.flash.read(block * cfg.block_size + off, size)
        except OSError as e:  # a read cannot fail in littlefs-python: give it blank flash
            self._failed(e)
            return b"\xff" * size

    def prog(self, cfg, block: int, off: int, data: bytes) -> int:
        try:
            self.flash.program(block * cfg.block_size + off, data)
        except OSError as e:
            return self._failed(e)
        return 0

    def erase(self, cfg, block: int) -> int:
        try:
            self.flash.erase(block)
        except OSError as e:
            return self._failed(e)
        return 0

    def sync(self, cfg) -> int:
        return 0


@contextmanager
def flash_errors(fs: LittleFS) -> Iterator[None]:
    """Turn a LittleFSError caused by the flash back into the NorError/PowerCut behind it."""
    ctx = fs.context
    if not isinstance(ctx, FlashContext):
        yield
        return
    ctx.error = None  # forget one from an earlier call made without this wrapper
    try:
        yield
    except LittleFSError as e:
        err, ctx.error = ctx.error, None
        if err is None:
            raise
        raise err from e


def mount(flash: NorFlash) -> LittleFS:
    """Mount the littlefs on `flash`; raises littlefs.LittleFSError if there is none (no
    implicit format, unlike LittleFS(mount=True))."""
    fs = LittleFS(FlashContext(flash), mount=False, **config(flash))
    with flash_errors(fs):
        fs.mount()
    return fs


def format(flash: NorFlash) -> None:
    """Make an empty littlefs on `flash`, as `vfs.VfsLfs2.mkfs(flash)` does."""
    fs = LittleFS(FlashContext(flash), mount=False, **config(flash))
    with flash_errors(fs):
        fs.format()


# read_file/write_file use littlefs-python's low-level calls: its FileHandle does not count
# itself closed when lfs_file_close fails (a power cut during the final commit), and closing
# it again when it is garbage collected trips a littlefs assert that aborts the interpreter.


def read_file(fs: LittleFS, path: str) -> bytes:
    with flash_errors(fs):
        fh = lfs_api.file_open(fs.fs, path, "r", fs.filename_encoding)
        try:
            return lfs_api.file_read(fs.fs, fh, lfs_api.file_size(fs.fs, fh))
        finally:
            lfs_api.file_close(fs.fs, fh)


def write_file(fs: LittleFS, path: str, data: bytes, mtime_ns: int | None = None) -> None:
    """Write `path` whole. `mtime_ns` (nanoseconds since 1970; -1 for now) also stores
    MicroPython's mtime attribute, at the cost of one more metadata commit."""
    with flash_errors(fs):
        fh = lfs_api.file_open(fs.fs, path, "w", fs.filename_encoding)
        try:
            lfs_api.file_write(fs.fs, fh, bytes(data))
        finally:
            lfs_api.file_close(fs.fs, fh)  # commits; littlefs frees the handle even on error
        if mtime_ns is not None:
            ns = time.time_ns() if mtime_ns < 0 else mtime_ns
            fs.setattr(path, MTIME_ATTR, ns.to_bytes(8, "little"))


def mtime_ns(fs: LittleFS, path: str) -> int | None:
    """The mtime MicroPython stored for `path`, or None."""
    try:
        return int.from_bytes(fs.getattr(path, MTIME_ATTR), "little")
    except LittleFSError:
        return None


def install(image: str | Path, firmware_dir: str | Path | None = None,
            profile_text: str | None = None) -> list[str]:
    """Copy a firmware tree (and /board.json) onto the image's littlefs, as flash.sh does over
    mpremote; files already there with the same bytes are left alone (no wear). Formats the
    image if it holds no file system. Returns the paths written."""
    flash = NorFlash(path=str(image))
    written = []
    try:
        try:
            fs = mount(flash)
        except LittleFSError:
            format(flash)
            fs = mount(flash)
        files: list[tuple[str, bytes]] = []
        if firmware_dir is not None:
            root = Path(firmware_dir)
            for p in sorted(root.rglob("*")):
                if p.is_file() and "__pycache__" not in p.parts:
                    files.append(("/" + p.relative_to(root).as_posix(), p.read_bytes()))
        if profile_text is not None:
            files.append(("/board.json", profile_text.encode()))
        for path, data in files:
            parts = path.split("/")[1:-1]
            for i in range(len(parts)):
                d = "/" + "/".join(parts[: i + 1])
                with contextlib.suppress(LittleFSError, FileExistsError):
                    fs.mkdir(d)
            try:
                same = read_file(fs, path) == data
            except (LittleFSError, OSError):
                same = False
            if not same:
                write_file(fs, path, data, mtime_ns=-1)
                written.append(path)
        fs.unmount()
    finally:
        flash.close()
    return written
