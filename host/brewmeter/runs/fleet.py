"""A maker's fleet: many machines, each the firmware's own Device and Syncer with its own
household (usage.py's days of use, its own seed, its own hours: the fleet spans time zones),
in one process on the virtual clock, reporting over real HTTP on 127.0.0.1 to the emulated
cloud, which runs in processes of its own (one, or several on PostgreSQL) on a SQLite file
or a PostgreSQL database and may be down for some hours (stopped: connections refused).
This is `brewmeter fleet`.

A fleet pays no process, socket or event loop per machine: the clock moves in steps
(STEP_MS), each machine plays its usage up to the step's end, and every report due then is
sent at once, concurrently, over one keep-alive connection pool (fleetnet.Pool in place of
the firmware's one-connection-per-report client: the decisions, what a report holds and
what a reply changes, stay the firmware's); its replies are applied a step later, once the
next step's reports are out, at the clock they were sent at (Fleet.settle). At the end
every machine is synced until caught up and the ledger is checked against the machines:
counters, brews lost or doubled, invoices."""

from __future__ import annotations

import asyncio
import gc
import heapq
import resource
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brewmeter import standins
from brewmeter.clock import VirtualClock
from brewmeter.onmicropython import replay
from brewmeter.profiles import load_profile
from brewmeter.runs.fleetcheck import PRICE_CENTS, Outcome, check
from brewmeter.runs.fleetmachine import STEP_MS, Machine, device_id, key
from brewmeter.runs.fleetnet import BATCH, Cloud, Pool
from brewmeter.runs.household import Link
from brewmeter.runs.usage import DAY_MS, START_WALL

if TYPE_CHECKING:  # the firmware and the cloud: imported where used (see profiles.py)
    from app.device import Device


HOUR_MS = 3_600_000
PRICE_PER_BREW = PRICE_CENTS / 100
HEAL_ROUNDS = 40  # at the end: syncs a minute apart until every machine is caught up
SEND_TURNS = 100  # loop turns a batch's syncs may take to send their requests
NOT_QUEUED = 1 << 62  # a machine with no entry in the dues
HEAL_BATCH = 1 << 62  # the end's syncs: their replies reach the machines as they come
PREPARE_TURN = 4  # days of use made ahead in each loop turn while the cloud answers
# The collector's thresholds while a fleet runs: it drops many small containers, few in
# cycles, and the default (a young collection every 700) scans them more than it frees.
GC_THRESHOLD = (20_000, 20, 20)


@dataclass
class Plan:
    devices: int = 100
    days: int = 30
    outage: tuple[int, int] | None = None  # (day, hours): the cloud down from that day's 00:00
    seed: int = 0
    board: str = "emulator"
    db: str | Path | None = None  # the ledger, kept: a SQLite file or a PostgreSQL URL;
    # None: a temporary file
    workers: int = 1  # the cloud's processes (more than one: on PostgreSQL)
    restore_at: int | None = None  # that day's 00:00: the ledger restored from a day-old backup


def parse_outage(s: str) -> tuple[int, int]:
    """DAY+HOURS (e.g. 10+6) -> (10, 6); ValueError if it is not one."""
    day, plus, hours = s.partition("+")
    if not plus or not day.isdigit() or not hours.isdigit() or int(hours) < 1:
        raise ValueError(f"expected DAY+HOURS (e.g. 10+6), got {s!r}")
    return int(day), int(hours)


def check_plan(plan: Plan) -> None:
    """ValueError, saying what, for a plan that cannot run."""
    from brewmeter.cloud.processes import check_workers

    if plan.devices < 1:
        raise ValueError("--devices must be at least 1")
    check_workers(plan.workers, plan.db or "")
    if plan.outage is not None and plan.outage[0] * 24 + plan.outage[1] > plan.days * 24:
        raise ValueError(f"--outage {plan.outage[0]}+{plan.outage[1]} ends after the "
                         f"{plan.days} days")
    r = plan.restore_at
    if r is not None:
        if not 1 <= r < plan.days:
            raise ValueError(f"--restore-at {r}: a day from 1 (a backup a day old) to "
                             f"{plan.days - 1}")
        if plan.outage and plan.outage[0] * 24 <= r * 24 <= plan.outage[0] * 24 + plan.outage[1]:
            raise ValueError(f"--restore-at {r}: the cloud is down then (--outage)")


@dataclass
class Flight:
    """A batch of reports sent at once: their syncs, the machines, the clock then."""

    task: asyncio.Task[None]
    batch: int
    who: set[int]
    at: int


class Fleet:
    def __init__(self, plan: Plan, db: str | Path, files: Path) -> None:
        self.plan = plan
        self.profile = load_profile(plan.board)
        self.clock = VirtualClock(ticks_start=replay.ticks(0))
        self.out = Outcome(plan.devices, plan.days, outage=plan.outage,
                           restore_at=plan.restore_at)
        self.cloud = Cloud(db, self.clock, files, plan.workers)
        self.files = files
        self.pool = Pool(self.out, self.clock)
        self.link = Link()
        self.machines: list[Machine] = []
        self.failing: set[int] = set()  # machines whose last report failed
        self.up_at: int | None = None  # when the cloud came back
        self.batch = 0  # the last batch of reports sent
        self.queued: list[int] = []  # each machine's soonest entry in the dues (or NOT_QUEUED)
        self.unprepared = deque(range(plan.devices))  # machines whose next day is not made

    def wall(self) -> int:
        return START_WALL + self.clock.ms // 1000

    def provision(self) -> None:
        from brewmeter.cloud.ledger import Ledger

        ledger = Ledger(self.cloud.db, synchronous="NORMAL", now=lambda: START_WALL)
        try:
            for i in range(self.plan.devices):
                ledger.add_device(device_id(i), key(self.plan.seed, i))
                ledger.set_plan(device_id(i), {"price_per_brew": PRICE_PER_BREW})
        finally:
            ledger.close()

    async def sync(self, due: list[int], dues: list[tuple[int, int]] | None = None,
                   batch: int = 0) -> None:
        """Report from each of the machines `due` at once (their replies held by the pool
        until `batch` is released); then their next reports into `dues`."""
        from app import wallclock

        BATCH.set(batch)  # the machines' tasks take it with them
        at = self.clock.ms
        wallclock.set_unix(self.wall())
        self.cloud.tick()
        results = await asyncio.gather(*(self.machines[i].syncer.sync_once() for i in due))
        for i, r in zip(due, results, strict=True):
            if r == "ok":
                self.out.reports += 1
                self.failing.discard(i)
            else:
                self.out.failures += 1
                self.failing.add(i)
            if dues is not None:
                self.queue(dues, i, self.machines[i].due_ms(at))
        if self.up_at is not None and self.out.drain_s is None and not self.failing:
            self.out.drain_s = (at - self.up_at) / 1000

    async def run(self, progress: Callable[[str], None] | None) -> None:
        """The days. Each step: the machines' usage up to its end, while the cloud answers
        the last step's reports; then the clock moves and the reports due go out."""
        plan, clock = self.plan, self.clock
        end = plan.days * DAY_MS
        down = up = None
        if plan.outage:
            down = plan.outage[0] * DAY_MS
            up = down + plan.outage[1] * HOUR_MS
        restore = backup = None
        if plan.restore_at is not None:
            restore = plan.restore_at * DAY_MS
            backup = restore - DAY_MS
        for i in range(plan.devices):
            self.machines.append(Machine(i, plan.seed, self.profile, self.cloud.url, self.link,
                                         self.wall))
        events = [(m.next_event(), i) for i, m in enumerate(self.machines)]
        heapq.heapify(events)
        dues = [(0, i) for i in range(plan.devices)]  # (due, machine): checked when popped
        self.queued = [0] * plan.devices
        inflight: list[Flight] = []  # the last step's reports, their replies not applied
        day = -1
        t0, cpu0, cloud0 = time.perf_counter(), time.process_time(), _children_cpu()
        while clock.ms < end:
            step_end = clock.ms + STEP_MS
            if not inflight:  # nothing to do before the next event or report: skip there
                nxt = min(events[0][0], dues[0][0] if dues else end)
                for edge in (down, up, backup, restore):
                    if edge is not None and clock.ms < edge:
                        nxt = min(nxt, edge)
                step_end = max(step_end, (nxt // STEP_MS + 1) * STEP_MS)
            step_end = min(step_end, end)
            touched = []
            while events and events[0][0] < step_end:
                _, i = heapq.heappop(events)
                m = self.machines[i]
                if m.play(step_end):  # its day made ahead is used: the next one is to make
                    self.unprepared.append(i)
                heapq.heappush(events, (m.next_event(), i))
                touched.append(i)
            clock.advance(step_end - clock.ms)
            if any(e is not None and clock.ms >= e for e in (down, up, backup, restore)):
                for f in inflight:  # nothing in flight across a stop or a backup
                    await self.settle(f)
                inflight = []
            if down is not None and clock.ms >= down:
                self.stop_cloud()
                down = None
            if up is not None and clock.ms >= up and not self.cloud.running:
                self.cloud.start()
                self.up_at, up = clock.ms, None
            if backup is not None and clock.ms >= backup:
                self.backup()
                backup = None
            if restore is not None and clock.ms >= restore:
                self.restore()
                restore = None
            for i in touched:  # usage may have brought its report forward
                self.queue(dues, i, self.machines[i].due_ms(clock.ms))
            # The reports due go out; then the last step's replies are applied (the cloud
            # answered them while this step played), and those machines due again go out.
            sent = await self.send(dues, set().union(*(f.who for f in inflight)))
            for f in inflight:
                await self.settle(f)
            inflight = sent + await self.send(dues, set().union(*(f.who for f in sent)))
            if progress and clock.ms // DAY_MS != day:
                day = clock.ms // DAY_MS
                progress(f"day {day}/{plan.days}: {self.out.reports} reports, "
                         f"{self.out.failures} failed, {time.perf_counter() - t0:.0f} s"
                         + (" (cloud down)" if not self.cloud.running else ""))
        for f in inflight:
            await self.settle(f)
        self.out.seconds = time.perf_counter() - t0
        self.out.fleet_cpu_s = time.process_time() - cpu0
        self.stop_cloud()  # (its time is counted once it has ended; it starts again to heal)
        self.out.cloud_cpu_s = _children_cpu() - cloud0

    async def send(self, dues: list[tuple[int, int]], busy: set[int]) -> list[Flight]:
        """The reports due now, but from none of the machines `busy`, sent at once (their
        next due into `dues` once their replies are applied): [its Flight], or []."""
        clock = self.clock
        due = set()
        while dues and dues[0][0] <= clock.ms:
            d, i = heapq.heappop(dues)
            if d != self.queued[i]:
                continue  # a later one of its entries: the sooner one was taken
            self.queued[i] = NOT_QUEUED
            if i in busy:  # (a busy one's next is queued once it is back)
                continue
            d = self.machines[i].due_ms(clock.ms)
            if d <= clock.ms:
                due.add(i)
            else:
                self.queue(dues, i, d)
        if not due:
            return []
        self.batch += 1
        task = asyncio.create_task(self.sync(sorted(due), dues, self.batch))
        # Each machine's sync runs to its request in its first turn: once all are out, no
        # part of them reads the clock until their replies are applied.
        for _ in range(SEND_TURNS):
            if self.pool.posted[self.batch] == len(due) or task.done():
                break
            await asyncio.sleep(0)
        else:
            raise RuntimeError("a machine's sync did not reach its request")
        return [Flight(task, self.batch, due, clock.ms)]

    def queue(self, dues: list[tuple[int, int]], i: int, d: int) -> None:
        """Machine i's report due at `d` into `dues`, unless it has a sooner entry there
        (which, when taken, finds its due anew)."""
        if d < self.queued[i]:
            self.queued[i] = d
            heapq.heappush(dues, (d, i))

    async def settle(self, f: Flight) -> None:
        """A batch's replies reach its machines, whenever the cloud sent them, at the time
        the batch went out (the cloud answers within a step): the same in every run. Until
        they have, the machines' next days are made (from their own generators: no clock)."""
        self.pool.release(f.batch)
        now, self.clock.ms = self.clock.ms, f.at
        try:
            while not f.task.done() and self.unprepared:
                for _ in range(min(PREPARE_TURN, len(self.unprepared))):
                    self.machines[self.unprepared.popleft()].prepare()
                await asyncio.sleep(0)
            await f.task
        finally:
            self.clock.ms = now

    def stop_cloud(self) -> None:
        """The cloud's processes stopped, the pool's connections to them dropped (none in
        flight then): a report after it connects anew, as the firmware's client does."""
        self.cloud.stop()
        self.pool.close()

    def backup(self) -> None:
        """The ledger backed up while the cloud serves (SQLite's online backup)."""
        from brewmeter.cloud import backup

        backup.backup(self.cloud.db, self._backup_file())

    def restore(self) -> None:
        """The cloud stopped, its ledger replaced with the backup, started again."""
        from brewmeter.cloud import backup

        self.stop_cloud()
        backup.restore(self._backup_file(), self.cloud.db)
        self.cloud.start()

    def _backup_file(self) -> Path:
        return self.files / "ledger.day-old"

    async def heal(self) -> None:
        """Every machine synced (a minute apart) until none owes a page, an event or a
        failed report."""
        for _ in range(HEAL_ROUNDS):
            behind = [i for i, m in enumerate(self.machines)
                      if i in self.failing or m.device.days.more or m.device.outbox.events
                      or m.syncer.acked is None or m.syncer.acked != _usage(m.device)]
            if not behind:
                return
            for i in behind:
                self.machines[i].syncer.schedule.due = self.clock.ticks_ms()
            self.pool.release(HEAL_BATCH)
            await self.sync(behind, batch=HEAL_BATCH)
            self.clock.advance(STEP_MS)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _usage(device: Device) -> dict[str, Any]:
    from app import synctask

    return synctask.usage(device)


def _date(wall: float) -> date:
    return datetime.fromtimestamp(wall, UTC).date()


async def _run(plan: Plan, db: str | Path, files: Path,
               progress: Callable[[str], None] | None) -> Outcome:
    from app import http, wallclock

    from brewmeter.cloud.ledger import Ledger

    fleet = Fleet(plan, db, files)
    fleet.provision()
    old_post = http.post
    old_clock = standins.clock
    standins.set_clock(fleet.clock)
    fleet.cloud.start()
    http.post = fleet.pool.post
    try:
        await fleet.run(progress)
        if not fleet.cloud.running:
            fleet.cloud.start()
        await fleet.heal()
    finally:
        http.post = old_post
        fleet.pool.close()
        fleet.cloud.stop()
        standins.set_clock(old_clock)
        wallclock.synced = False
    out = fleet.out
    out.machines = {m.id: _usage(m.device) for m in fleet.machines}
    out.db = plan.db
    out.period = (_date(START_WALL), _date(fleet.wall()))
    ledger = Ledger(db, synchronous="NORMAL", now=lambda: fleet.wall())
    try:
        out.checks = check(ledger, out.machines, *out.period)
    finally:
        ledger.close()
    return out


def run(plan: Plan, progress: Callable[[str], None] | None = None) -> Outcome:
    """The fleet's days, then the checks (in Outcome.checks). The ledger is kept at plan.db
    when given."""
    check_plan(plan)
    old = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "ledger.db" if plan.db is None else plan.db
            return asyncio.run(_run(plan, db, Path(tmp), progress))
    finally:
        gc.set_threshold(*old)


def main_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
