"""The firmware Store's filesystem interface over a directory of the host, for tests and
harness runs that need persistence but not littlefs (lfsfs.py has the littlefs one)."""

from __future__ import annotations

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
