"""The ledger's own thread, with group commit of reports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from brewmeter.cloud.ledger import (
    Ledger,
    Reply,
)
from brewmeter.cloud.report import Report

T = TypeVar("T")


class Worker:
    """The ledger's own thread. Every ledger call runs there, one at a time, off the event
    loop; reports that arrive while a batch is committing go together into the next batch
    (group commit: one fsync for many reports, each still durable before its reply).

    Except the reports' batches on a database whose commit waits for nothing (`quick`:
    SQLite that does not sync at each commit): the loop applies those itself. A batch is
    then only CPU, and from another thread it costs more: sqlite3 lets go of the GIL at
    every statement, and each time the loop takes it, so the two threads trade it (and a
    context switch) a dozen times per report. The other calls stay on the thread (the
    database's lock keeps them one at a time with the batches): a batch arriving while one
    runs waits for it on the loop."""

    def __init__(self, ledger: Ledger, max_batch: int = 256) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._pending: list[tuple[tuple[str, Report], asyncio.Future[Reply]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0
        self.inline = ledger.db.quick  # the loop applies the batches (see above)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def report(self, device_id: str, report: Report) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending.append(((device_id, report), fut))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                items = [item for item, _ in batch]
                try:
                    results: list[Any] = (self.ledger.apply_batch(items) if self.inline else
                                          await self.call(self.ledger.apply_batch, items))
                except Exception as e:  # the commit failed: none of the batch is stored
                    results = [e] * len(batch)
                self.batches += 1
                for (_, fut), r in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(r, Exception):
                        fut.set_exception(r)
                    else:
                        fut.set_result(r)
        finally:
            self._drainer = None

    async def restart(self) -> None:
        await self.call(self.ledger.reopen)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
