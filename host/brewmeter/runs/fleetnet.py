"""The fleet run's network: the cloud in a process of its own (on the ledger file, its clock
the fleet's virtual one, stopped for an outage and started again on the same port) and the
machines' HTTP, one pool of keep-alive connections standing in for the firmware's
one-connection-per-report client (app.http.post)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brewmeter.clock import VirtualClock
from brewmeter.runs.usage import START_WALL

if TYPE_CHECKING:
    from brewmeter.runs.fleetcheck import Outcome

HOUR_MS = 3_600_000
CONCURRENCY = 64  # requests in flight at once, over as many keep-alive connections


def _serve(db: str, port: int, clock_file: str) -> None:
    """The cloud's process: the ledger file on 127.0.0.1:port, its clock the fleet's
    virtual one (a double in `clock_file`, mapped into both processes). Says "ready" on
    stdout once it listens; runs until terminated."""
    import mmap

    from brewmeter.cloud import CloudServer
    from brewmeter.cloud.ledger import Ledger

    with open(clock_file, "r+b") as f:
        wall = mmap.mmap(f.fileno(), 8)
    # Gone with the fleet, however it ends: its end of our stdin closes.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()

    async def main() -> None:
        ledger = Ledger(db, synchronous="NORMAL", now=lambda: struct.unpack("d", wall)[0])
        async with CloudServer(ledger, port=port):
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


class Cloud:
    """The cloud's process: started, stopped (an outage: connections refused), started
    again on the same port and ledger."""

    def __init__(self, db: Path, clock: VirtualClock) -> None:
        import mmap

        self.db = db
        self.clock = clock
        self.clock_file = db.with_name(db.name + ".clock")
        self.clock_file.write_bytes(bytes(8))
        with open(self.clock_file, "r+b") as f:
            self.wall = mmap.mmap(f.fileno(), 8)
        with socket.socket() as s:  # a free port, kept across restarts
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    def tick(self) -> None:
        self.wall[:] = struct.pack("d", START_WALL + self.clock.ms / 1000)

    def start(self) -> None:
        self.tick()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from brewmeter.runs.fleetnet import _serve; "
             "_serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])",
             str(self.db), str(self.port), str(self.clock_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait(10)
            raise RuntimeError(f"the cloud did not start (exit {self.proc.returncode})")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe:
                    pipe.close()
            self.proc = None


class Pool:
    """The fleet's HTTP: one aiohttp session (keep-alive, CONCURRENCY connections) standing
    in for app.http.post, counting each request by the virtual hour and timing each 200."""

    def __init__(self, out: Outcome, clock: VirtualClock) -> None:
        import aiohttp

        self.out, self.clock = out, clock
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))

    async def post(self, url: str, path: str, headers: dict[str, Any], body: bytes,
                   timeout_ms: int = 10000, ssl: Any = None, max_body: int = 4096
                   ) -> tuple[int, int, bytes]:
        import aiohttp
        from app import http

        self.out.requests += 1
        self.out.per_hour[self.clock.ms // HOUR_MS] += 1
        t0 = time.perf_counter()
        try:
            async with self.session.post(  # within the firmware's bounds: time, reply size
                    url + path, data=body, timeout=aiohttp.ClientTimeout(timeout_ms / 1000),
                    headers={"Content-Type": "application/json",
                             **{k: str(v) for k, v in headers.items()}}) as r:
                data = await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise http.HttpError(str(e) or e.__class__.__name__) from None
        if len(data) > max_body:
            raise http.HttpError(f"reply over {max_body} bytes")
        if r.status == 200:
            self.out.latencies.append(time.perf_counter() - t0)
        http.date = r.headers.get("Date", "").encode()
        retry = r.headers.get("Retry-After", "")
        return r.status, int(retry) if retry.isdigit() else 0, data
