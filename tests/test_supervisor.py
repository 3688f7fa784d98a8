"""app/supervisor.py under CPython: the backoff, one fault per kind and day, a task restarted
after a failure (MemoryError too) while another keeps running."""

from __future__ import annotations

import asyncio

import pytest
from app import supervisor
from app.device import Device
from app.supervisor import Supervisor, backoff_ms, detail


def test_backoff_doubles_from_a_second_to_five_minutes():
    assert [backoff_ms(n) for n in (1, 2, 3, 4)] == [1000, 2000, 4000, 8000]
    assert backoff_ms(9) == 256000 and backoff_ms(10) == backoff_ms(1000) == 300000


def test_detail_names_the_task_and_cuts_the_message():
    d = detail("sync", MemoryError("x" * 200))
    assert d == "sync MemoryError: " + "x" * 60


def test_one_fault_per_kind_and_day(profile, tmp_path):
    from brewmeter.standins.hostfs import DirFS

    dev = Device(profile, DirFS(tmp_path))
    dev.boot(1, 0)
    sup = Supervisor(dev)
    assert sup.failed("sync", ValueError(), 5)
    assert not sup.failed("sync", ValueError("again"), 5)
    assert sup.failed("sync", OSError(), 5)  # another kind
    assert sup.failed("console", ValueError(), 5)  # another task
    assert sup.failed("sync", ValueError(), 6)  # the next day


async def test_a_failing_task_restarts_and_the_others_run_on(profile, tmp_path, monkeypatch):
    from brewmeter.standins.hostfs import DirFS

    monkeypatch.setattr(supervisor, "backoff_ms", lambda n: 10)
    dev = Device(profile, DirFS(tmp_path))
    dev.boot(1, 0)
    sup = Supervisor(dev)
    starts = []
    ticks = []

    async def flaky():
        starts.append(1)
        await asyncio.sleep(0.01)
        raise MemoryError("memory allocation failed, allocating 4096 bytes")

    async def steady():
        while True:
            ticks.append(1)
            await asyncio.sleep(0.005)

    a = asyncio.create_task(sup.keep("sync", flaky))
    b = asyncio.create_task(sup.keep("day", steady))
    for _ in range(300):  # (a loaded machine may take a while)
        await asyncio.sleep(0.01)
        if len(starts) >= 5 and len(ticks) >= 20:
            break
    a.cancel()
    b.cancel()
    assert len(starts) >= 5 and len(ticks) >= 20
    assert dev.faults == [("task_failed", "sync MemoryError: memory allocation failed, "
                                          "allocating 4096 bytes")]
    assert [e["code"] for e in dev.outbox.events if e["kind"] == "fault"] == ["task_failed"]


@pytest.mark.slow
async def test_the_test_hook_fails_a_task_once(profile, tmp_path):
    from brewmeter.standins.hostfs import DirFS

    dev = Device(profile, DirFS(tmp_path))
    dev.boot(1, 0)
    sup = Supervisor(dev, hook="fail:console")
    runs = []

    async def console():
        runs.append(1)

    await sup.keep("day", console)
    assert runs == [1] and not dev.faults  # not the hooked task
    t = asyncio.create_task(sup.keep("console", console))
    await asyncio.sleep(1.8)  # fails after 0.5 s, restarts after 1 s
    assert t.done() and runs == [1, 1] and dev.faults[0][1].startswith("console RuntimeError")


def test_take_hook_reads_once(tmp_path):
    p = tmp_path / "hook"
    p.write_text("stall\n")
    assert supervisor.take_hook(str(p)) == "stall"
    assert supervisor.take_hook(str(p)) is None
