"""The firmware Store's filesystem interface (open/mkdir/remove, raising OSError) over
littlefs-python, so the device's own storage code runs on real littlefs under CPython."""

from __future__ import annotations

import errno

from littlefs import LittleFS, LittleFSError

from brewmeter.emulator import lfs
from brewmeter.onmicropython.norflash import NorFlash


def _oserror(fs: LittleFS, e: LittleFSError) -> OSError:
    ctx = fs.context
    if isinstance(ctx, lfs.FlashContext) and ctx.error is not None:
        err, ctx.error = ctx.error, None  # taken: a later, unrelated error is reported as such
        return err  # the flash's own NorError / PowerCut
    return OSError(-e.code, str(e))  # littlefs codes are negated errnos (-28 = ENOSPC)


def _call(fs: LittleFS, fn, *args):  # noqa: ANN001, ANN202
    """fn(*args), with littlefs's errors as the OSErrors the firmware's Store expects."""
    try:
        return fn(*args)
    except LittleFSError as e:
        raise _oserror(fs, e) from e


class _File:
    def __init__(self, fs: LittleFS, f) -> None:  # noqa: ANN001 - littlefs-python's file
        self._fs = fs
        self._f = f

    def read(self, *args: int) -> bytes:
        return _call(self._fs, self._f.read, *args)

    def write(self, data: bytes) -> int:
        return _call(self._fs, self._f.write, data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return _call(self._fs, self._f.seek, offset, whence)

    def close(self) -> None:
        try:
            _call(self._fs, self._f.close)  # littlefs commits the file here
        except OSError:
            # littlefs forgets the file even when its close fails; mark the handle closed
            # as littlefs-python's own close does, or its finalizer closes it again and
            # trips an assertion in littlefs.
            setattr(self._f, "__IOBase_closed", True)  # noqa: B010
            raise

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LfsFS:
    def __init__(self, fs: LittleFS) -> None:
        self.fs = fs

    def open(self, path: str, mode: str) -> _File:
        try:
            return _File(self.fs, _call(self.fs, self.fs.open, path, mode, 0))  # unbuffered
        except FileNotFoundError as e:  # littlefs-python's own, without an errno
            raise OSError(errno.ENOENT, path) from e

    def mkdir(self, path: str) -> None:
        _call(self.fs, self.fs.mkdir, path)

    def remove(self, path: str) -> None:
        _call(self.fs, self.fs.remove, path)


def mount(flash: NorFlash) -> tuple[LfsFS, str]:
    """Mount the littlefs on `flash` for the firmware's Device: (fs, mount point)."""
    try:
        return LfsFS(lfs.mount(flash)), ""
    except LittleFSError as e:
        raise OSError(-e.code, f"no littlefs on the flash: {e}") from e
