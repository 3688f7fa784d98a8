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

import multiprocessing
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, TextIO

from brewmeter.cloud.db import is_url

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


def serve(workers: int, host: str, port: int, target: Callable[..., None],
          args: tuple[Any, ...], banner: Callable[[int], str], out: TextIO = sys.stdout
          ) -> int:
    """Serve from `workers` processes, each `target(host, port, *args, ready)` (it sends
    True on `ready` once it listens: cloud.server.serve_worker), until SIGINT or SIGTERM
    (or a worker's death: then 1). Prints `banner(port)` once all listen."""
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
                said, say = ctx.Pipe(duplex=False)
                p = ctx.Process(target=target, daemon=True, args=(host, port, *args, say))
                p.start()
                procs.append((p, said))
            for p, said in procs:
                if not said.poll(START_TIMEOUT_S) or not said.recv():
                    print(f"brewmeter cloud: a worker did not start (exit {p.exitcode})",
                          file=sys.stderr)
                    return 1
        print(banner(port), file=out, flush=True)
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
