"""The fleet run's network: the cloud in processes of its own (one, or --workers on one
port; on the ledger, its clock the fleet's virtual one, stopped for an outage and started
again on the same port) and the machines' HTTP, one pool of keep-alive connections standing
in for the firmware's one-connection-per-report client (app.http.post), its replies handed
to the machines a batch at a time."""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brewmeter.clock import VirtualClock
from brewmeter.runs.usage import START_WALL

if TYPE_CHECKING:
    from brewmeter.runs.fleetcheck import Outcome

HOUR_MS = 3_600_000
CONCURRENCY = 64  # requests in flight at once, over as many keep-alive connections


def _serve(db: str, port: int, clock_file: str, workers: int) -> None:
    """A cloud process: the ledger (a SQLite file or a PostgreSQL URL) on 127.0.0.1:port,
    beside the others of `workers` (SO_REUSEPORT), its clock the fleet's virtual one (a
    double in `clock_file`, mapped into every process). Says "ready" on stdout once it
    listens; runs until terminated."""
    import mmap

    from brewmeter.cloud import CloudServer
    from brewmeter.cloud.ledger import Ledger

    with open(clock_file, "r+b") as f:
        wall = mmap.mmap(f.fileno(), 8)
    # Gone with the fleet, however it ends: its end of our stdin closes.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()

    async def main() -> None:
        ledger = Ledger(db, synchronous="NORMAL", now=lambda: struct.unpack("d", wall)[0])
        async with CloudServer(ledger, port=port, reuse_port=workers > 1):
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


class Cloud:
    """The cloud's processes (`workers` of them on one port): started, stopped (an outage:
    connections refused), started again on the same port and ledger. `files`: a folder for
    the clock's file."""

    def __init__(self, db: str | Path, clock: VirtualClock, files: Path,
                 workers: int = 1) -> None:
        import mmap

        self.db, self.clock, self.workers = db, clock, workers
        self.clock_file = files / "cloud.clock"
        self.clock_file.write_bytes(bytes(8))
        with open(self.clock_file, "r+b") as f:
            self.wall = mmap.mmap(f.fileno(), 8)
        with socket.socket() as s:  # a free port, kept across restarts
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[str]] = []

    @property
    def running(self) -> bool:
        return bool(self.procs)

    def tick(self) -> None:
        self.wall[:] = struct.pack("d", START_WALL + self.clock.ms / 1000)

    def start(self) -> None:
        self.tick()
        self.procs = [subprocess.Popen(
            [sys.executable, "-c", "import sys; from brewmeter.runs.fleetnet import _serve; "
             "_serve(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))",
             str(self.db), str(self.port), str(self.clock_file), str(self.workers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(self.workers)]
        for p in self.procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                p.wait(10)
                code = p.returncode
                self.stop()
                raise RuntimeError(f"the cloud did not start (exit {code})")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)
            for pipe in (p.stdin, p.stdout):
                if pipe:
                    pipe.close()
        self.procs = []


BATCH: contextvars.ContextVar[int] = contextvars.ContextVar("BATCH", default=0)
MAX_HEAD = 8192  # a reply's status line and headers, at most


class _Req:
    __slots__ = ("batch", "fut", "sent", "result")

    def __init__(self, fut: asyncio.Future[tuple[int, int, bytes, bytes]], batch: int) -> None:
        self.fut, self.batch, self.sent = fut, batch, time.perf_counter()
        self.result: tuple[int, int, bytes, bytes] | BaseException | None = None


class _Conn(asyncio.Protocol):
    """One keep-alive connection to the cloud: requests written as they come, replies read
    in their order (HTTP/1.1), each within the bounds the request was sent with."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiting: deque[tuple[_Req, int]] = deque()  # (request, its reply bound)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.waiting:
            end = self.buf.find(b"\r\n\r\n", 0, MAX_HEAD)
            if end < 0:
                if len(self.buf) >= MAX_HEAD:
                    self._fail(f"reply headers over {MAX_HEAD} bytes")
                return
            try:
                status, length, retry, date, close = _head(self.buf[:end])
            except ValueError as e:
                self._fail(str(e))
                return
            req, bound = self.waiting[0]
            if length > bound:
                self._fail(f"reply over {bound} bytes")
                return
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4:end + 4 + length], self.buf[end + 4 + length:]
            self.waiting.popleft()
            self.pool.arrived(req, (status, retry, date, body))
            if close:
                self._fail("connection closed")
                return

    def _fail(self, why: str) -> None:
        """Every request waiting here fails; the connection is dropped."""
        if self in self.pool.conns:
            self.pool.conns.remove(self)
        from app import http

        while self.waiting:
            self.pool.arrived(self.waiting.popleft()[0], http.HttpError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection closed mid-reply")


def _head(head: bytes) -> tuple[int, int, int, bytes, bool]:
    """(status, Content-Length, Retry-After, Date, close) of a reply's head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError("not an HTTP reply")
    length, retry, date, close = -1, 0, b"", False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            length = int(value) if value.isdigit() else -1
        elif name == b"retry-after" and value.isdigit():
            retry = int(value)
        elif name == b"date":
            date = value
        elif name == b"connection":
            close = value.lower() == b"close"
    if length < 0:
        raise ValueError("reply without a Content-Length")
    return int(parts[1]), length, retry, date, close


class Pool:
    """The fleet's HTTP in place of app.http.post: up to CONCURRENCY keep-alive connections
    (a request goes on an idle one, else a new one, else, once none is being opened, after
    another's on the least busy), each request counted by the virtual hour and each 200
    timed from its sending to its reply read. A reply reaches its sender only once its
    batch (BATCH, the fleet's step) is released: the fleet applies a step's replies at one
    point of its clock whatever the cloud's speed, so the same seed gives the same run."""

    def __init__(self, out: Outcome, clock: VirtualClock) -> None:
        self.out, self.clock = out, clock
        self.conns: list[_Conn] = []
        self.connecting = 0
        self.released = 0  # replies of batches up to this reach their senders when read
        self.held: list[_Req] = []  # read, batch not released yet
        self.posted: Counter[int] = Counter()  # requests made, by batch
        self.change: asyncio.Future[None] | None = None  # a connection opened or failed

    def arrived(self, req: _Req, result: tuple[int, int, bytes, bytes] | BaseException
                ) -> None:
        if req.result is not None:
            return
        req.result = result
        if not isinstance(result, BaseException) and result[0] == 200:
            self.out.latencies.append(time.perf_counter() - req.sent)
        if req.batch <= self.released:
            _settle(req)
        else:
            self.held.append(req)

    def release(self, batch: int) -> None:
        """Replies of batches up to `batch` reach their senders (now, or when read)."""
        self.released = max(self.released, batch)
        held, self.held = self.held, []
        for req in held:
            if req.batch <= self.released:
                _settle(req)
            else:
                self.held.append(req)

    async def _conn(self, host: str, port: int) -> _Conn:
        while True:
            for c in list(self.conns):
                # A write to it failed (the cloud went away): the loop has not told it yet,
                # but nothing more may go on it (asyncio drops such writes, warning).
                if c.transport is not None and c.transport.is_closing():
                    c._fail("connection lost")
                elif not c.waiting:
                    return c
            if len(self.conns) + self.connecting < CONCURRENCY:
                self.connecting += 1
                try:
                    _, conn = await asyncio.get_running_loop().create_connection(
                        lambda: _Conn(self), host, port)
                finally:
                    self.connecting -= 1
                    self._changed()
                self.conns.append(conn)
                return conn
            if not self.connecting:
                return min(self.conns, key=lambda c: len(c.waiting))
            # The others are being opened (a batch larger than CONCURRENCY at the start, or
            # after an outage): wait for them, rather than open more or queue on the first.
            if self.change is None:
                self.change = asyncio.get_running_loop().create_future()
            await self.change

    def _changed(self) -> None:
        if self.change is not None:
            self.change.set_result(None)
            self.change = None

    async def post(self, url: str, path: str, headers: dict[str, Any], body: bytes | str,
                   timeout_ms: int = 10000, ssl: Any = None, max_body: int = 4096,
                   date: list[bytes] | None = None) -> tuple[int, int, bytes]:
        from app import http

        self.out.requests += 1
        self.out.per_hour[self.clock.ms // HOUR_MS] += 1
        self.posted[BATCH.get()] += 1
        _, host, port, base = http.parse_url(url)
        loop = asyncio.get_running_loop()
        req = _Req(loop.create_future(), BATCH.get())
        timer = None
        try:
            conn = await self._conn(host, port)
        except OSError as e:  # (refused: it too reaches the sender when its batch does)
            self.arrived(req, http.HttpError(str(e) or e.__class__.__name__))
        else:
            data = body.encode() if isinstance(body, str) else body
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            assert conn.transport is not None
            conn.transport.write(
                f"POST {base}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                f"{head}\r\n".encode() + data)
            conn.waiting.append((req, max_body))
            timer = loop.call_later(timeout_ms / 1000, conn._fail, "timed out")
        try:
            status, retry, got, reply = await req.fut
        finally:
            if timer is not None:
                timer.cancel()
        if date is not None:
            date[0] = got
        return status, retry, reply

    def close(self) -> None:
        for c in list(self.conns):
            c._fail("closed")


def _settle(req: _Req) -> None:
    if req.fut.done():
        return
    if isinstance(req.result, BaseException):
        req.fut.set_exception(req.result)
    else:
        assert req.result is not None
        req.fut.set_result(req.result)
