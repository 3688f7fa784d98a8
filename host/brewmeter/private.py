"""Files that hold secrets (a device's key and PIN, the cloud's ledger of device keys): readable
by their owner alone from the first byte. They are created with mode 0600 by os.open, never
written with the default mode and narrowed after (another user could open the file in
between, and a file once open stays readable to them)."""

from __future__ import annotations

import os
from pathlib import Path

MODE = 0o600
# SQLite's files beside a database: it creates them with the database file's own mode.
SQLITE_SIBLINGS = ("-wal", "-shm", "-journal")


def write_new(path: Path, text: str) -> None:
    """Write `text` to `path`, which must not exist yet: FileExistsError if it does, or if a
    link is there (O_EXCL does not follow it, so nothing is written where it points)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def keep_private(path: Path, siblings: tuple[str, ...] = ()) -> None:
    """Make sure `path` exists and is its owner's alone: created 0600 if missing, narrowed to
    its owner's bits if wider (a file from before), and so are the `siblings` that exist
    (`path` + suffix). For a SQLite database, call it before sqlite opens the file."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, MODE)  # opened only to create or narrow it
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)
    for suffix in siblings:
        p = Path(f"{path}{suffix}")
        try:
            mode = p.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            p.chmod(mode & 0o700)
