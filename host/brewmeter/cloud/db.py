"""The ledger's database: one object the cloud's services take (its connection, its
transactions, its dialect), on SQLite (the embedded default: a file, or in memory) or on
PostgreSQL (psycopg 3, `postgresql://...`).

The services write SQL once, with `?` placeholders and what both engines take (ON CONFLICT
with its target, UPDATE ... FROM, no INSERT OR IGNORE); the dialect holds the few words
that differ (the write lock, row locks). A write is `with db.tx() as c:` (one transaction:
committed at the end, rolled back whole if the body or the COMMIT fails); a read is `with
db.read() as c:`. On SQLite `c` is the sqlite3 connection itself; on PostgreSQL a thin
wrapper that turns `?` into psycopg's placeholders.

Exactly-once across processes comes from the database, not from a lock here: the
per-process lock only shares this process's one connection between threads. On PostgreSQL
a write that changes a device's rows first locks that device's row (`need`, or
`lock_devices` for a batch, in id order so batches never deadlock), so the writes of one
device are serial across every process; unique keys (a report's seq, an event's id, an
order's id, a closed month) make a second insert of the same thing a no-op or a refusal."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from brewmeter.private import SQLITE_SIBLINGS, keep_private


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """What the services run SQL on: the sqlite3 connection, or PgConn."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    begin: str  # starts a write transaction
    for_update: str  # after a SELECT: lock the rows read until the transaction ends


SQLITE = Dialect("sqlite", "BEGIN IMMEDIATE", "")
POSTGRES = Dialect("postgresql", "BEGIN", " FOR UPDATE")


def is_url(db: str | Path) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


def shown(db: str | Path) -> str:
    """`db` as it may be printed: a URL without its password."""
    if not is_url(db):
        return str(db)
    u = urlsplit(str(db))
    if u.password is None:
        return str(db)
    host = u.hostname or ""
    netloc = f"{u.username}:***@{host}" + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def is_busy(e: BaseException) -> bool:
    """Whether `e` is the database saying "not now" (locked by someone else, a lock wait or
    a serialization conflict, the server gone): nothing was stored, try again later."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(e, sqlite3.OperationalError):
        return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    pg = sys.modules.get("psycopg")
    if pg is None:
        return False
    return isinstance(e, pg.errors.SerializationFailure | pg.errors.DeadlockDetected
                      | pg.errors.LockNotAvailable | pg.OperationalError)


class Database:
    """An open ledger database (see the module's docstring). `shared`: whether other
    processes may write it too (PostgreSQL), so nothing read may be cached in memory."""

    dialect: Dialect
    shared: bool
    where: str  # the file or URL, as it may be printed
    # Whether a write transaction waits for nothing but the CPU (no flush of the disk, no
    # server's round trip): the event loop may run it itself (see worker.Worker).
    quick = False

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        raise NotImplementedError
        yield

    @contextmanager
    def read(self) -> Iterator[Conn]:
        raise NotImplementedError
        yield

    def lookup(self) -> AbstractContextManager[Conn]:
        """A connection for a quick read from the event loop (keys, tokens)."""
        return self.read()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """One statement on its own (committed at once): for tests and tools."""
        with self.read() as c:
            return c.execute(sql, params)

    def lock_devices(self, c: Conn, ids: Iterable[str]) -> None:
        """Lock these devices' rows till the transaction ends, in id order (PostgreSQL)."""

    def columns(self, c: Conn, table: str) -> set[str]:
        raise NotImplementedError

    def tables(self, c: Conn) -> list[str]:
        raise NotImplementedError

    def dump(self) -> str:
        """The whole database as text: tests compare it to prove nothing changed."""
        raise NotImplementedError

    def reopen(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    """SQLite in WAL mode; one connection, one lock around each use (the server calls from
    its worker thread, tests from theirs). Writes are BEGIN IMMEDIATE: they wait
    `busy_timeout_s` for another process's write lock, then raise (is_busy)."""

    dialect = SQLITE
    shared = False

    def __init__(self, path: str | Path, synchronous: str = "FULL",
                 busy_timeout_s: float = 1.0) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous: FULL, NORMAL or EXTRA")
        self.path = str(path)
        self.where = self.path
        self.synchronous = synchronous.upper()
        # NORMAL in WAL mode: a commit appends to the WAL, its fsync waits for a checkpoint
        # (and no other process waits for the write lock: a SQLite ledger is one process's).
        self.quick = self.synchronous == "NORMAL"
        self.busy_timeout_s = busy_timeout_s
        self.lock = threading.RLock()
        self.conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT), not the
        # module's implicit ones. check_same_thread=False: the lock serializes every use.
        if self.path not in ("", ":memory:"):  # it holds the devices' keys in clear
            keep_private(Path(self.path), SQLITE_SIBLINGS)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_s)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        """One write transaction. If the body or the COMMIT fails, it is rolled back (a
        failed COMMIT leaves SQLite's transaction open) and the error raised: nothing stays."""
        with self.lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")  # waits busy_timeout_s, then raises (busy)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[Conn]:
        with self.lock:
            yield self.conn

    def columns(self, c: Conn, table: str) -> set[str]:
        return {r[1] for r in c.execute(f"PRAGMA table_info({table})")}

    def tables(self, c: Conn) -> list[str]:
        return [t for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]

    def dump(self) -> str:
        with self.lock:
            return "\n".join(self.conn.iterdump())

    def reopen(self) -> None:
        if self.path in ("", ":memory:"):
            raise RuntimeError("an in-memory ledger cannot be reopened: use a file")
        with self.lock:
            self.conn.close()
            self.conn = self._connect()

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class PgConn:
    """A psycopg connection as the services use it: `?` placeholders (translated once per
    statement text), execute and executemany returning the cursor."""

    _sql: dict[str, str] = {}

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    def _pg(cls, sql: str) -> str:
        out = cls._sql.get(sql)
        if out is None:
            out = cls._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return out

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self.conn.execute(self._pg(sql) if parameters else sql,
                                 parameters if parameters else None)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Any:
        rows = list(seq_of_parameters)
        if rows:
            cur = self.conn.cursor()
            cur.executemany(self._pg(sql), rows)
            return cur
        return None


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3: one connection per process for transactions (autocommit,
    with our own BEGIN ... COMMIT at READ COMMITTED: each statement sees what committed
    before it, and the device row locks order the writes), and one for the lookups the
    event loop makes (keys, tokens), so they never wait behind a batch. A write waits at most
    `busy_timeout_s` for a lock (lock_timeout), then raises (is_busy). Commits are durable
    before they return (synchronous_commit on: the server's default)."""

    dialect = POSTGRES
    shared = True

    def __init__(self, url: str, busy_timeout_s: float = 1.0) -> None:
        self.url = url
        self.where = shown(url)
        self.busy_timeout_s = busy_timeout_s
        self.lock = threading.RLock()
        self.lookup_lock = threading.Lock()
        self.conn = PgConn(self._connect())
        self.lookup_conn = PgConn(self._connect())

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True)
        # (set here, not in the URL's options, which may name a search_path)
        conn.execute(f"SET lock_timeout = {max(1, int(self.busy_timeout_s * 1000))}")
        return conn

    def _alive(self, pc: PgConn) -> PgConn:
        if pc.conn.closed or pc.conn.broken:  # the server restarted: connect again
            pc.conn = self._connect()
        return pc

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        with self.lock:
            pc = self._alive(self.conn)
            pc.conn.execute("BEGIN")
            try:
                yield pc
                pc.conn.execute("COMMIT")
            except BaseException:
                if not pc.conn.closed and pc.conn.info.transaction_status != 0:  # not IDLE
                    pc.conn.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[Conn]:
        with self.lock:
            yield self._alive(self.conn)

    @contextmanager
    def lookup(self) -> Iterator[Conn]:
        with self.lookup_lock:
            yield self._alive(self.lookup_conn)

    def lock_devices(self, c: Conn, ids: Iterable[str]) -> None:
        ids = sorted(set(ids))
        if ids:
            c.execute(f"SELECT id FROM devices WHERE id IN ({','.join('?' * len(ids))}) "
                      "ORDER BY id FOR UPDATE", ids).fetchall()

    def columns(self, c: Conn, table: str) -> set[str]:
        return {r[0] for r in c.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema="
            "current_schema() AND table_name=?", (table,))}

    def tables(self, c: Conn) -> list[str]:
        return [t for (t,) in c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema="
            "current_schema() AND table_type='BASE TABLE' ORDER BY table_name")]

    def dump(self) -> str:
        out = []
        with self.read() as c:
            for t in self.tables(c):
                out.append(f"-- {t}")
                out += map(repr, c.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3"
                                           if len(self.columns(c, t)) >= 3 else
                                           f"SELECT * FROM {t} ORDER BY 1").fetchall())
        return "\n".join(out)

    def reopen(self) -> None:
        with self.lock, self.lookup_lock:
            self.conn.conn.close()
            self.lookup_conn.conn.close()
            self.conn.conn = self._connect()
            self.lookup_conn.conn = self._connect()

    def close(self) -> None:
        with self.lock, self.lookup_lock:
            self.conn.conn.close()
            self.lookup_conn.conn.close()
