"""A maker's fleet: many machines, each the firmware's own Device and Syncer with its own
household (usage.py's days of use, its own seed, its own hours: the fleet spans time zones),
in one process on the virtual clock, reporting over real HTTP on 127.0.0.1 to the emulated
cloud, which runs in a process of its own on a SQLite ledger file and may be down for some
hours (stopped: connections refused). This is `brewmeter fleet`.

A fleet pays no process, socket or event loop per machine: the clock moves in steps
(STEP_MS), each machine plays its usage up to the step's end, and every report due then is
sent at once, concurrently, over one keep-alive connection pool (aiohttp in place of the
firmware's one-connection-per-report client: the decisions, what a report holds and what a
reply changes, stay the firmware's). At the end every machine is synced until caught up and
the ledger is checked against the machines: counters, brews lost or doubled, invoices."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brewmeter import standins
from brewmeter.clock import VirtualClock
from brewmeter.harness import load_profile
from brewmeter.onboard import replay
from brewmeter.runs.household import Link
from brewmeter.runs.usage import DAY_MS, START_WALL, _day
from brewmeter.scenario import Script
from brewmeter.standins.hostfs import MemFS

if TYPE_CHECKING:  # the firmware and the cloud: imported where used (see harness.py)
    from app.device import Device
    from app.syncer import Syncer

    from brewmeter.cloud.ledger import Ledger

HOUR_MS = 3_600_000
STEP_MS = 300_000  # the virtual clock's step: reports due within it go out together
PRICE_PER_BREW = 0.35
PRICE_CENTS = 35
CONCURRENCY = 64  # requests in flight at once, over as many keep-alive connections
HEAL_ROUNDS = 40  # at the end: syncs a minute apart until every machine is caught up
SEND_YIELDS = 4  # loop turns for a step's requests to be written (aiohttp awaits before)


@dataclass
class Plan:
    devices: int = 100
    days: int = 30
    outage: tuple[int, int] | None = None  # (day, hours): the cloud down from that day's 00:00
    seed: int = 0
    board: str = "emulator"
    db: Path | None = None  # the ledger file (kept); None: a temporary one


def parse_outage(s: str) -> tuple[int, int]:
    """DAY+HOURS (e.g. 10+6) -> (10, 6); ValueError if it is not one."""
    day, plus, hours = s.partition("+")
    if not plus or not day.isdigit() or not hours.isdigit() or int(hours) < 1:
        raise ValueError(f"expected DAY+HOURS (e.g. 10+6), got {s!r}")
    return int(day), int(hours)


def check_plan(plan: Plan) -> None:
    """ValueError, saying what, for a plan that cannot run."""
    if plan.devices < 1:
        raise ValueError("--devices must be at least 1")
    if plan.outage is not None and plan.outage[0] * 24 + plan.outage[1] > plan.days * 24:
        raise ValueError(f"--outage {plan.outage[0]}+{plan.outage[1]} ends after the "
                         f"{plan.days} days")


@dataclass
class Outcome:
    devices: int
    days: int
    seconds: float = 0.0  # real time of the run (the days, not the checks)
    reports: int = 0  # answered 200
    requests: int = 0  # every attempt, refused ones too
    failures: int = 0
    latencies: list[float] = field(default_factory=list)  # of each 200, seconds
    per_hour: Counter[int] = field(default_factory=Counter)  # requests per virtual hour
    outage: tuple[int, int] | None = None
    drain_s: float | None = None  # from the outage's end until no machine owes a failed report
    checks: dict[str, Any] = field(default_factory=dict)
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> its counters
    period: tuple[date, date] | None = None  # the days billed
    db: Path | None = None  # the ledger, when kept (Plan.db)

    def rates(self) -> dict[str, Any]:
        """The steady request rate (per hour, the days before the outage less the first, or
        every day but the first), the hour after the outage and the peak of the day after."""
        first = 24  # day 0: every machine's boot report
        if self.outage is None:
            hours = range(first, self.days * 24)
            after = peak = None
        else:
            start = self.outage[0] * 24
            end = start + self.outage[1]
            hours = range(first, start) if start > first + 24 else range(end + 24, self.days * 24)
            after = self.per_hour[end]
            peak = max(self.per_hour[h] for h in range(end, min(end + 24, self.days * 24 + 1)))
        steady = sum(self.per_hour[h] for h in hours) / max(1, len(hours))
        out: dict[str, Any] = {"steady_requests_per_h": round(steady, 1)}
        if after is not None and peak is not None:
            out["post_outage_requests_per_h"] = after
            out["post_outage_peak_per_h"] = peak
            out["post_outage_peak_ratio"] = round(peak / steady, 2) if steady else None
        return out

    def json(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {
            "devices": self.devices, "days": self.days, "seconds": round(self.seconds, 2),
            "device_days_per_s": round(self.devices * self.days / self.seconds, 1),
            "reports": self.reports, "requests": self.requests, "failures": self.failures,
            "reports_per_s": round(self.reports / self.seconds, 1),
            "latency_p50_ms": pct(0.5), "latency_p99_ms": pct(0.99),
            "outage": None if self.outage is None else
            {"day": self.outage[0], "hours": self.outage[1]},
            **self.rates(),
            "drain_s": self.drain_s,
            **self.checks,
        }


def device_id(i: int) -> str:
    return f"bm-fleet{i:06d}"


def _key(seed: int, i: int) -> str:
    return hashlib.sha256(f"fleet {seed} {i}".encode()).hexdigest()


# -- the cloud, in its own process -----------------------------------------------------------

def _serve(db: str, port: int, clock_file: str) -> None:
    """The cloud's process: the ledger file on 127.0.0.1:port, its clock the fleet's
    virtual one (a double in `clock_file`, mapped into both processes). Says "ready" on
    stdout once it listens; runs until terminated."""
    import mmap

    from brewmeter.cloud import CloudServer
    from brewmeter.cloud.ledger import Ledger

    with open(clock_file, "r+b") as f:
        wall = mmap.mmap(f.fileno(), 8)

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
            [sys.executable, "-c", "import sys; from brewmeter.runs.fleet import _serve; "
             "_serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])",
             str(self.db), str(self.port), str(self.clock_file)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait(10)
            raise RuntimeError(f"the cloud did not start (exit {self.proc.returncode})")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None


# -- the machines ----------------------------------------------------------------------------

class Machine:
    """One machine: its Device and Syncer, its household's days (from its own seed, shifted
    by its time zone) and where it is in them."""

    def __init__(self, i: int, plan: Plan, profile: Any, url: str, link: Link,
                 wall: Callable[[], int]) -> None:
        from app.device import Device
        from app.syncer import wire

        self.id = device_id(i)
        self.profile = profile
        self.rng = random.Random(plan.seed * 1_000_003 + i)
        self.offset = self.rng.randrange(DAY_MS // STEP_MS) * STEP_MS  # its midnight, UTC
        self.day = -1  # its local days, from the one the run starts in
        self.events: list[tuple[int, int, int, int]] = []
        self.k = 0
        self.device: Device = Device(profile, MemFS())
        self.device.boot(1, replay.ticks(0))
        self.syncer: Syncer = wire(self.device, {"device_id": self.id, "key": _key(plan.seed, i),
                                                 "cloud_url": url, "ntp": ""}, link, wall=wall)
        self.failing_since: int | None = None
        self._more_days()

    def _more_days(self) -> None:
        self.day += 1
        script = Script(self.profile, start_ms=self.offset + (self.day - 1) * DAY_MS)
        _day(script, self.rng, (self.day - 1) % 7)
        # The flow meter's pulses in one event per run (or per stretch of water with no
        # pump) rather than one every PULSE_CHUNK_MS: the same water, a quarter the events.
        self.events = []
        for e in sorted(script.events):
            if e[0] < 0:
                continue
            last = self.events[-1] if self.events else None
            if last and last[1] == e[1] == replay.PULSES:
                self.events[-1] = (last[0], last[1], last[2] + e[2], last[3])
            else:
                self.events.append(e)
        self.k = 0

    def next_event(self) -> int:
        return self.events[self.k][0] if self.k < len(self.events) else \
            self.offset + self.day * DAY_MS

    def play(self, until: int) -> None:
        """Its usage up to script time `until` (not included)."""
        dev = self.device
        while True:
            if self.k >= len(self.events):
                if self.offset + self.day * DAY_MS >= until:
                    return
                self._more_days()
                continue
            t, op, a, b = self.events[self.k]
            if t >= until:
                return
            self.k += 1
            tw = replay.ticks(t)
            if op == replay.POWERED:  # Device.tick counts powered time from the ticks
                a = 0
            replay.step(dev.meter, t, op, a, b, lambda code, i, tw=tw: dev.event(code, i, tw))
            dev.tick(tw)

    def due_ms(self, clock_ms: int) -> int:
        """Script time its next report is due."""
        from brewmeter.clock import ticks_diff

        return clock_ms + ticks_diff(self.syncer.schedule.due, replay.ticks(clock_ms))


class Pool:
    """The fleet's HTTP: one aiohttp session (keep-alive, CONCURRENCY connections) standing
    in for app.http.post, counting each request by the virtual hour and timing each 200."""

    def __init__(self, out: Outcome, clock: VirtualClock) -> None:
        import aiohttp

        self.out, self.clock = out, clock
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            timeout=aiohttp.ClientTimeout(total=30))

    async def post(self, url: str, path: str, headers: dict[str, Any], body: bytes,
                   timeout_ms: int = 10000, ssl: Any = None, max_body: int = 0
                   ) -> tuple[int, int, bytes]:
        import aiohttp
        from app import http

        self.out.requests += 1
        self.out.per_hour[self.clock.ms // HOUR_MS] += 1
        t0 = time.perf_counter()
        try:
            async with self.session.post(
                    url + path, data=body,
                    headers={"Content-Type": "application/json",
                             **{k: str(v) for k, v in headers.items()}}) as r:
                data = await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise http.HttpError(str(e) or e.__class__.__name__) from None
        if r.status == 200:
            self.out.latencies.append(time.perf_counter() - t0)
        http.date = r.headers.get("Date", "").encode()
        retry = r.headers.get("Retry-After", "")
        return r.status, int(retry) if retry.isdigit() else 0, data


class Fleet:
    def __init__(self, plan: Plan, db: Path) -> None:
        self.plan = plan
        self.profile = load_profile(plan.board)
        self.clock = VirtualClock(ticks_start=replay.ticks(0))
        self.out = Outcome(plan.devices, plan.days, outage=plan.outage)
        self.cloud = Cloud(db, self.clock)
        self.link = Link()
        self.machines: list[Machine] = []
        self.failing: set[int] = set()  # machines whose last report failed
        self.up_at: int | None = None  # when the cloud came back

    def wall(self) -> int:
        return START_WALL + self.clock.ms // 1000

    def provision(self) -> None:
        from brewmeter.cloud.ledger import Ledger

        ledger = Ledger(self.cloud.db, synchronous="NORMAL", now=lambda: START_WALL)
        try:
            for i in range(self.plan.devices):
                ledger.add_device(device_id(i), _key(self.plan.seed, i))
                ledger.set_plan(device_id(i), {"price_per_brew": PRICE_PER_BREW})
        finally:
            ledger.close()

    async def sync(self, due: list[int], dues: list[tuple[int, int]] | None = None) -> None:
        """Report from each of the machines `due` at once; then their next reports into
        `dues`."""
        from app import wallclock

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
                heapq.heappush(dues, (self.machines[i].due_ms(at), i))
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
        for i in range(plan.devices):
            self.machines.append(Machine(i, plan, self.profile, self.cloud.url, self.link,
                                         self.wall))
        events = [(m.next_event(), i) for i, m in enumerate(self.machines)]
        heapq.heapify(events)
        dues = [(0, i) for i in range(plan.devices)]  # (due, machine): checked when popped
        inflight: asyncio.Task[None] | None = None
        day = -1
        t0 = time.perf_counter()
        while clock.ms < end:
            step_end = clock.ms + STEP_MS
            if inflight is None:  # nothing to do before the next event or report: skip there
                nxt = min(events[0][0], dues[0][0] if dues else end)
                for edge in (down, up):
                    if edge is not None and clock.ms < edge:
                        nxt = min(nxt, edge)
                step_end = max(step_end, (nxt // STEP_MS + 1) * STEP_MS)
            step_end = min(step_end, end)
            touched = []
            while events and events[0][0] < step_end:
                _, i = heapq.heappop(events)
                m = self.machines[i]
                m.play(step_end)
                heapq.heappush(events, (m.next_event(), i))
                touched.append(i)
            if inflight is not None:
                await inflight
                inflight = None
            clock.advance(step_end - clock.ms)
            if down is not None and clock.ms >= down:
                self.cloud.stop()
                down = None
            if up is not None and clock.ms >= up and self.cloud.proc is None:
                self.cloud.start()
                self.up_at, up = clock.ms, None
            for i in touched:  # usage may have brought its report forward
                heapq.heappush(dues, (self.machines[i].due_ms(clock.ms), i))
            due = set()
            while dues and dues[0][0] <= clock.ms:
                _, i = heapq.heappop(dues)
                if i in due:
                    continue
                d = self.machines[i].due_ms(clock.ms)
                if d <= clock.ms:
                    due.add(i)
                else:
                    heapq.heappush(dues, (d, i))
            if due:
                inflight = asyncio.create_task(self.sync(sorted(due), dues))
                for _ in range(SEND_YIELDS):  # let the requests go out before the next play
                    await asyncio.sleep(0)
            if progress and clock.ms // DAY_MS != day:
                day = clock.ms // DAY_MS
                progress(f"day {day}/{plan.days}: {self.out.reports} reports, "
                         f"{self.out.failures} failed, {time.perf_counter() - t0:.0f} s"
                         + (" (cloud down)" if self.cloud.proc is None else ""))
        if inflight is not None:
            await inflight
        self.out.seconds = time.perf_counter() - t0

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
            await self.sync(behind)
            self.clock.advance(STEP_MS)


def _usage(device: Device) -> dict[str, Any]:
    from app import sync

    return sync.usage(device)


def check(ledger: Ledger, machines: dict[str, dict[str, Any]], first: date, last: date
          ) -> dict[str, Any]:
    """The ledger against the machines (id -> its counters as a report carries them):
    counters that differ, brews billed that no machine counted (doubled) or counted but not
    billed (lost), and each month's invoice line against its brews and the price."""
    mismatched = lost = doubled = bad_months = months = 0
    for dev, counters in machines.items():
        got = (ledger.device(dev) or {}).get("counters", {})
        if any(got.get(k) != v for k, v in counters.items()):
            mismatched += 1
        inv = ledger.invoice(dev, first, last) or {}
        billed = 0
        for line in inv.get("months", []):
            months += 1
            days = ledger.days(dev, date.fromisoformat(line["from"]),
                               date.fromisoformat(line["to"])) or {}
            day_brews = sum(d["brews_total"] for d in days.get("days", []))
            if line["brews"] != day_brews or line["amount_cents"] != PRICE_CENTS * day_brews:
                bad_months += 1
            billed += line["brews"]
        billed += sum(a["brews"] for a in inv.get("adjustments", []))
        have = counters.get("brews_total", 0)
        lost += max(0, have - billed)
        doubled += max(0, billed - have)
    return {"counters_mismatched": mismatched, "lost_brews": lost, "doubled_brews": doubled,
            "invoice_months": months, "invoice_months_wrong": bad_months,
            "ok": mismatched == lost == doubled == bad_months == 0}


def _date(wall: float) -> date:
    return datetime.fromtimestamp(wall, UTC).date()


async def _run(plan: Plan, db: Path, progress: Callable[[str], None] | None) -> Outcome:
    from app import http, wallclock

    from brewmeter.cloud.ledger import Ledger

    fleet = Fleet(plan, db)
    fleet.provision()
    old_post = http.post
    old_clock = standins.clock
    standins.set_clock(fleet.clock)
    fleet.cloud.start()
    pool = Pool(fleet.out, fleet.clock)
    http.post = pool.post
    try:
        await fleet.run(progress)
        if fleet.cloud.proc is None:
            fleet.cloud.start()
        await fleet.heal()
    finally:
        http.post = old_post
        await pool.session.close()
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
    if plan.db is not None:
        return asyncio.run(_run(plan, plan.db, progress))
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_run(plan, Path(tmp) / "ledger.db", progress))


def table(o: Outcome) -> str:
    d = o.json()
    rows = [f"{o.devices} machines, {o.days} days: {d['device_days_per_s']} device-days/s "
            f"({d['seconds']} s)",
            f"reports: {o.reports} ({d['reports_per_s']}/s), {o.failures} failed; latency "
            f"p50 {d['latency_p50_ms']} ms, p99 {d['latency_p99_ms']} ms",
            f"steady: {d['steady_requests_per_h']} requests per virtual hour"]
    if o.outage:
        rows.append(f"outage: day {o.outage[0]}, {o.outage[1]} h; the hour after: "
                    f"{d['post_outage_requests_per_h']} requests, the day's peak hour "
                    f"{d['post_outage_peak_per_h']} ({d['post_outage_peak_ratio']}x steady); "
                    f"backlog drained in "
                    + ("-" if o.drain_s is None else f"{o.drain_s / 60:.0f} min"))
    c = o.checks
    rows.append(f"checks: counters differ on {c['counters_mismatched']} machines, "
                f"{c['lost_brews']} brews lost, {c['doubled_brews']} doubled, "
                f"{c['invoice_months_wrong']} of {c['invoice_months']} invoice months wrong")
    rows.append("PASS" if c["ok"] else "FAIL")
    return "\n".join(rows)


def main_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
