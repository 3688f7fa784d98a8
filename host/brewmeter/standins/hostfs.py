"""The firmware Store's filesystem interface over a directory of the host (or in memory), for
tests and harness runs that need persistence but not littlefs (lfsfs.py has the littlefs
one)."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import IO


class DirFS:
    """`full = True` makes every write fail as littlefs does when out of space."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.full = False

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def open(self, path: str, mode: str) -> IO[bytes]:
        if "w" in mode and self.full:
            raise OSError(28, "no space")
        return open(self._p(path), mode)  # noqa: SIM115 - the caller closes it

    def mkdir(self, path: str) -> None:
        os.mkdir(self._p(path))


class _Writer(io.BytesIO):
    """A MemFS file being written: there once closed (one class, not one per open: a fleet
    of machines opens millions)."""

    def __init__(self, files: dict[str, bytes], path: str) -> None:
        super().__init__()
        self.files, self.path = files, path

    def close(self) -> None:
        if not self.closed:
            self.files[self.path] = self.getvalue()
        super().close()


class MemFS:
    """The same interface in memory, for long simulations: a file is replaced whole when
    the writer closes it, as littlefs commits a file on close."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = set()

    def open(self, path: str, mode: str) -> IO[bytes]:
        if "w" not in mode:
            if path not in self.files:
                raise OSError(errno.ENOENT, path)
            return io.BytesIO(self.files[path])
        if path.rpartition("/")[0] not in self.dirs:
            raise OSError(errno.ENOENT, path)
        return _Writer(self.files, path)

    def mkdir(self, path: str) -> None:
        if path in self.dirs:
            raise OSError(errno.EEXIST, path)
        self.dirs.add(path)
