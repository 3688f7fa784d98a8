"""`brewmeter cloud backup PATH` and `restore PATH`: the ledger (SQLite) copied with SQLite's
online backup, page by page under its own locking, so a backup may be taken while the cloud
serves; a restore replaces the ledger with a backup (the cloud stopped: it caches the
devices' keys), the ledger it replaces kept beside it first.

On PostgreSQL (`--db postgresql://...`): pg_dump's custom format (one consistent snapshot,
the cloud may be serving), and pg_restore in one transaction (a damaged or foreign file
changes nothing), the database it replaces dumped first to PATH.before-restore. Where the
URL names a schema (options=-csearch_path=NAME), only that schema."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from brewmeter.cloud import pgserver
from brewmeter.cloud.db import is_url, shown
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
    if is_url(db):
        return _pg_backup(str(db), Path(dest))
    src = _ledger_file(db)
    _check(src)
    _copy(src, Path(dest))
    return _check(Path(dest))


def restore(src: str | Path, db: str | Path) -> int:
    """Replace the ledger at `db` with the backup at `src` (checked first: a file that is not
    a sound ledger changes nothing); the ledger replaced is kept as DB.before-restore.
    Returns the devices restored."""
    if is_url(db):
        return _pg_restore(Path(src), str(db))
    ledger = _ledger_file(db)
    n = _check(Path(src))
    if ledger.exists():
        _copy(ledger, ledger.with_name(ledger.name + BEFORE_RESTORE))
    _copy(Path(src), ledger)
    for s in SQLITE_SIBLINGS:  # the replaced ledger's log would be replayed onto the backup
        Path(str(ledger) + s).unlink(missing_ok=True)
    keep_private(ledger, SQLITE_SIBLINGS)
    return n


def replaced(src: str | Path, db: str | Path) -> str:
    """Where restore(src, db) keeps the ledger it replaces."""
    return f"{src if is_url(db) else db}{BEFORE_RESTORE}"


# -- PostgreSQL ------------------------------------------------------------------------------

def _tool(name: str) -> str:
    """pg_dump or pg_restore: the server packages' (as new as the server), else PATH's."""
    found = pgserver.find_bin()
    if found is not None and (found / name).exists():
        return str(found / name)
    on_path = shutil.which(name)
    if on_path is None:
        raise BackupError(f"{name} is not installed (the Debian package postgresql-client)")
    return on_path


def _schema(url: str) -> str | None:
    """The schema the URL's options put first on the search path, if any."""
    for opt in parse_qs(urlsplit(url).query).get("options", []):
        for word in opt.replace("-c ", "-c").split():
            if word.startswith("-csearch_path="):
                return word.split("=", 1)[1].split(",")[0].strip() or None
    return None


def _pg(*args: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        err = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise BackupError(f"{Path(args[0]).name}: {err[0] if err else r.returncode}")
    return r.stdout


def _devices(url: str) -> int:
    import psycopg

    try:
        with psycopg.connect(url) as c:
            row = c.execute("SELECT count(*) FROM devices").fetchone()
    except psycopg.Error as e:
        raise BackupError(f"{shown(url)}: not a brewmeter ledger "
                          f"({str(e).splitlines()[0]})") from None
    return int(row[0]) if row else 0


def _dump(url: str, dest: Path) -> None:
    """The database (or the URL's schema) into `dest` through a file beside it, renamed into
    place: a failure leaves `dest` as it was."""
    tmp = dest.with_name(dest.name + ".partial")
    tmp.unlink(missing_ok=True)
    keep_private(tmp)
    schema = _schema(url)
    try:
        _pg(_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={tmp}",
            *([f"--schema={schema}"] if schema else []), f"--dbname={url}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _pg_backup(url: str, dest: Path) -> int:
    n = _devices(url)
    _dump(url, dest)
    return n


def _pg_restore(src: Path, url: str) -> int:
    if not src.is_file():
        raise BackupError(f"{src}: no such file")
    try:
        listing = _pg(_tool("pg_restore"), "--list", str(src))
    except BackupError as e:
        raise BackupError(f"{src}: not a brewmeter ledger ({e})") from None
    if not any(" TABLE DATA " in line and line.split()[-2] == "devices"
               for line in listing.splitlines() if not line.startswith(";")):
        raise BackupError(f"{src}: not a brewmeter ledger (no devices table)")
    _devices(url)  # the database is a ledger too, and reachable
    _dump(url, Path(replaced(src, url)))
    _pg(_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction",
        "--exit-on-error", f"--dbname={url}", str(src))
    return _devices(url)
