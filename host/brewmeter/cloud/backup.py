"""`brewmeter cloud backup PATH` and `restore PATH`: the ledger (SQLite) copied with SQLite's
online backup, page by page under its own locking, so a backup may be taken while the cloud
serves; a restore replaces the ledger with a backup (the cloud stopped: it caches the
devices' keys), the ledger it replaces kept beside it first."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from brewmeter.private import SQLITE_SIBLINGS, keep_private

BEFORE_RESTORE = ".before-restore"  # the replaced ledger, beside it


class BackupError(ValueError):
    pass


def _ledger_file(db: str | Path) -> Path:
    if str(db) in ("", ":memory:"):
        raise BackupError("--db: backup and restore need the ledger's file")
    return Path(db)


def _copy(src: Path, dst: Path) -> None:
    """src into dst (made or replaced) by SQLite's backup API, through a temporary file beside
    dst renamed into place: a failure leaves dst as it was."""
    tmp = dst.with_name(dst.name + ".partial")
    tmp.unlink(missing_ok=True)
    keep_private(tmp)
    try:
        with contextlib.closing(sqlite3.connect(src)) as s, \
                contextlib.closing(sqlite3.connect(tmp)) as d:
            s.backup(d)
            d.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _check(path: Path) -> int:
    """The number of devices in the ledger at `path`; BackupError if it is not a sound one."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            (ok,) = db.execute("PRAGMA integrity_check").fetchone()
            if ok != "ok":
                raise BackupError(f"{path}: damaged ({ok})")
            (n,) = db.execute("SELECT count(*) FROM devices").fetchone()
    except sqlite3.DatabaseError as e:  # not SQLite, or no devices table
        raise BackupError(f"{path}: not a brewmeter ledger ({e})") from None
    return n


def backup(db: str | Path, dest: str | Path) -> int:
    """The ledger at `db` into `dest` (replaced if there); returns the devices it holds."""
    src = _ledger_file(db)
    _check(src)
    _copy(src, Path(dest))
    return _check(Path(dest))


def restore(src: str | Path, db: str | Path) -> int:
    """Replace the ledger at `db` with the backup at `src` (checked first: a file that is not
    a sound ledger changes nothing); the ledger replaced is kept as DB.before-restore.
    Returns the devices restored."""
    ledger = _ledger_file(db)
    n = _check(Path(src))
    if ledger.exists():
        _copy(ledger, ledger.with_name(ledger.name + BEFORE_RESTORE))
    _copy(Path(src), ledger)
    for s in SQLITE_SIBLINGS:  # the replaced ledger's log would be replayed onto the backup
        Path(str(ledger) + s).unlink(missing_ok=True)
    keep_private(ledger, SQLITE_SIBLINGS)
    return n
