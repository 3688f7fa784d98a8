"""`brewmeter cloud --workers N`: N processes serving one port, all on one PostgreSQL
database. Each worker binds a listening socket of its own to the port (SO_REUSEPORT: the
kernel spreads the connections across them) and runs the whole cloud (its event loop, its
ledger thread, its connections to the database); they share nothing but the database.
Exactly-once across them is the database's: a batch of reports locks its devices' rows
and a report's seq is stored once per device (its primary key), an order id once per
device, a month's close once, each in a transaction. A SQLite ledger is one process's (it
keeps keys, tokens and owners in memory, and one file takes one writer at a time): more
than one worker on it is refused."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import socket
import sys
import tempfile
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from brewmeter.cloud.db import is_url

if TYPE_CHECKING:
    from brewmeter.cloud.faults import Faults
    from brewmeter.cloud.merchant import Merchant

START_TIMEOUT_S = 60


def check_workers(workers: int, db: str | Path) -> None:
    """ValueError, saying why, for a number of workers this database cannot take."""
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    if workers > 1 and not is_url(db):
        raise ValueError(f"--workers {workers} needs --db postgresql://...: a SQLite ledger "
                         "is one process's (it keeps keys, tokens and owners in memory)")


def hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one) with SO_REUSEPORT, not listening:
    it keeps the port ours while the workers bind theirs to it."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s


def _worker(host: str, port: int, db: str, tls: tuple[str, str] | None, token: str,
            faults: Faults | None, merchant: Merchant | None, ready: Any) -> None:
    """One worker: the cloud on host:port beside the others, until SIGTERM."""
    from brewmeter.cloud.server import CloudServer, server_ssl_context

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (Ctrl-C reaches all)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        ctx = server_ssl_context(*tls) if tls else None
        async with CloudServer(db, host=host, port=port, admin_token=token, ssl_context=ctx,
                               faults=faults, merchant=merchant, reuse_port=True):
            ready.send(True)
            await stop.wait()

    asyncio.run(main())


def serve(workers: int, host: str, port: int, db: str, tls: tuple[str, str] | None, *,
          admin_token: str | None, faults: Faults | None, merchant: Merchant | None,
          out: TextIO = sys.stdout, token_note: str | None = None) -> int:
    """Serve from `workers` processes until SIGINT or SIGTERM (or a worker's death: then
    1), the database's schema already made (the caller opened it once). Without an
    `admin_token`, a new one in a file (server.new_token)."""
    from brewmeter.cloud.server import new_token

    with tempfile.TemporaryDirectory(prefix="brewmeter-cloud-") as d:  # yours alone (0700)
        if admin_token is None:
            admin_token, token_note = new_token(Path(d))
        return _serve(workers, host, port, db, tls, admin_token, faults, merchant, out,
                      token_note)


def _serve(workers: int, host: str, port: int, db: str, tls: tuple[str, str] | None,
           admin_token: str, faults: Faults | None, merchant: Merchant | None, out: TextIO,
           token_note: str | None) -> int:
    from brewmeter.cloud.db import shown

    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    ctx = multiprocessing.get_context("spawn")  # (the token goes through a pipe, not argv)
    procs: list[Any] = []
    try:
        with hold_port(host, port) as held:
            port = held.getsockname()[1]
            for _ in range(workers):
                theirs, ours = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker, daemon=True, args=(
                    host, port, db, tls, admin_token, faults, merchant, ours))
                p.start()
                procs.append((p, theirs))
            for p, theirs in procs:
                if not theirs.poll(START_TIMEOUT_S) or not theirs.recv():
                    print(f"brewmeter cloud: a worker did not start (exit {p.exitcode})",
                          file=sys.stderr)
                    return 1
        url = f"{'https' if tls else 'http'}://{host}:{port}"
        print(f"brewmeter cloud listening on {url} (ledger {shown(db)}, {workers} workers)",
              file=out, flush=True)
        if token_note:
            print(token_note, file=out, flush=True)
        while not stop:
            if wait([p.sentinel for p, _ in procs], timeout=0.5):
                print("brewmeter cloud: a worker ended; stopping the others", file=sys.stderr)
                return 1
        return 0
    except EOFError:
        print("brewmeter cloud: a worker did not start", file=sys.stderr)
        return 1
    finally:
        for p, _ in procs:
            if p.is_alive():
                p.terminate()
        for p, _ in procs:
            p.join(10)
        for s, h in old.items():
            signal.signal(s, h)
