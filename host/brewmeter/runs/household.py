"""A machine in use for months, as its owner lives with it: the firmware's Device and Syncer
under CPython on the virtual clock, reporting over HTTP on 127.0.0.1 to the emulated cloud,
which is also the merchant (it places, ships and delivers the machine's orders). The owner
refills what runs out, with the delivered pack when there is one and from a shop when not
(a stock-out), and approves ask-first orders in the cloud. Power cuts and network faults
can be mixed in. This is `brewmeter simulate` (its days of use come from usage.py); the
scenario tests check what it prints."""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brewmeter import standins
from brewmeter.clock import VirtualClock
from brewmeter.onmicropython import replay
from brewmeter.runs.usage import DAY_MS, START_WALL, _day, counters_summary
from brewmeter.scenario import Script
from brewmeter.standins.hostfs import MemFS

if TYPE_CHECKING:  # the firmware and the cloud: imported where used (see profiles.py)
    from app.device import Device
    from app.synctask import Syncer

    from brewmeter.cloud import CloudServer, Merchant

DEVICE = "bm-home01"
KEY = "6b" * 32
HOUR_MS = 3_600_000


@dataclass
class Plan:
    """What the months hold. `usage(day)` scales the day's brews (0: nobody there);
    `online(day, hour)` says whether the network is up then."""

    days: int = 365
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    usage: Callable[[int], float] = lambda day: 1.0
    online: Callable[[int, int], bool] = lambda day, hour: True
    power_cuts: int = 0  # at random hours over the run
    net_faults: float = 0.0  # share of report requests the cloud's network spoils
    approve_after_h: int | None = 6  # the owner approves ask-first orders (None: never)
    merchant: Merchant = field(default_factory=lambda: _merchant())


def _merchant() -> Merchant:
    from brewmeter.cloud import Merchant

    return Merchant(ship_after_s=86400, deliver_after_s=86400)


@dataclass
class Outcome:
    days: int
    counters: dict[str, Any]  # as simulate.summary gives them
    supplies: dict[str, Any]  # the device's own view at the end (console `consumables`)
    orders: list[dict[str, Any]]  # the cloud's (merchant's) orders
    refills: Counter[str] = field(default_factory=Counter)
    stockouts: Counter[str] = field(default_factory=Counter)  # empty, nothing delivered
    alerts: Counter[str] = field(default_factory=Counter)  # fault events by code
    requests: list[dict[str, Any]] = field(default_factory=list)  # order_requested events
    power_cuts: int = 0
    reports: int = 0
    report_failures: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)  # a row a day (Home.row)

    def json(self) -> dict[str, Any]:
        """The counters (as `brewmeter simulate` always printed them), and what the
        months did to the consumables."""
        return {**self.counters, "supplies": self.supplies, "orders": self.orders,
                "refills": dict(self.refills), "stockouts": dict(self.stockouts),
                "alerts": dict(self.alerts), "power_cuts": self.power_cuts,
                "reports": self.reports, "report_failures": self.report_failures}


class Link:
    """The radio (it has no stand-in here): up when the plan says the network is."""

    def __init__(self) -> None:
        self.ok = True

    async def up(self) -> None:
        if not self.ok:
            raise OSError("network down")


class _Home:
    def __init__(self, plan: Plan, profile: Any, fs: MemFS, cloud: CloudServer,
                 clock: VirtualClock) -> None:
        self.plan, self.profile, self.fs, self.cloud, self.clock = plan, profile, fs, cloud, clock
        self.link = Link()
        self.out = Outcome(plan.days, {}, {}, [])
        self.device, self.syncer = self.boot()
        self._seen: dict[str, str] = {}  # order id -> its status at the last row
        self._last = (0, Counter(), Counter(), 0, 0)  # brews, refills, stock-outs, reports

    def row(self, d: int) -> dict[str, Any]:
        """Day `d` as it ended: its brews, each consumable's level (% left) and days left
        (empty: no forecast yet), the orders requested, shipped and delivered that day, refills
        and stock-outs, reports sent and failed."""
        dev, out = self.device, self.out
        wall = self.wall()
        brews = dev.meter.c.total_brews()
        b0, r0, s0, n0, f0 = self._last
        row: dict[str, Any] = {"day": d + 1, "date": _date(wall - 1), "brews": brews - b0}
        for name, v in dev.supplies.report(dev.config, self.profile, wall,
                                           dev.per_day(wall)).items():
            row[f"{name}_pct"] = v["pct"]
            row[f"{name}_days"] = "" if v["days"] is None else v["days"]
        moved: dict[str, list[str]] = {"requested": [], "shipped": [], "delivered": []}
        for o in self.cloud.ledger.orders(DEVICE) or []:
            before = self._seen.get(o["order"])
            if before is None:
                moved["requested"].append(o["item"])
            for st in ("shipped", "delivered"):
                if o[f"{st}_at"] and before not in (st, "delivered"):
                    moved[st].append(o["item"])
            self._seen[o["order"]] = o["status"]
        for k, items in moved.items():
            row[f"orders_{k}"] = " ".join(items)
        row["refills"] = " ".join(sorted((out.refills - r0).elements()))
        row["stockouts"] = " ".join(sorted((out.stockouts - s0).elements()))
        row["reports"] = out.reports - n0
        row["report_failures"] = out.report_failures - f0
        self._last = (brews, out.refills.copy(), out.stockouts.copy(), out.reports,
                      out.report_failures)
        return row

    def wall(self) -> int:
        return START_WALL + self.clock.ms // 1000

    def boot(self) -> tuple[Device, Syncer]:
        from app.device import Device
        from app.synctask import wire

        dev = Device(self.profile, self.fs)
        dev.boot(1, replay.ticks(self.clock.ms))
        s = wire(dev, {"device_id": DEVICE, "key": KEY, "cloud_url": self.cloud.url,
                       "ntp": ""}, self.link, wall=self.wall)  # the clock: set as NTP would
        return dev, s

    def at(self, t: int) -> int:
        """Move the clock to script time `t` (or keep it, if a late brew ran past it)."""
        self.clock.advance(max(0, t - self.clock.ms))
        return replay.ticks(self.clock.ms)

    def owner(self) -> None:
        """Refill whatever is spent: with its delivered order, else from a shop."""
        from app.supplies import ITEMS

        dev = self.device
        wall = self.wall()
        spent = [name for name in ITEMS if self.spent(name, wall)]
        if not spent:
            return
        delivered = {o["order"] for o in self.cloud.ledger.orders(DEVICE) or []
                     if o["status"] == "delivered"}
        for name in spent:
            if f"{name}-{dev.supplies.cycle(name)}" not in delivered:
                self.out.stockouts[name] += 1
            dev.refill(name, "owner", self.clock.ticks_ms())
            self.out.refills[name] += 1

    def spent(self, name: str, wall: int) -> bool:
        from app import protocol, waterfilter

        dev = self.device
        used, cap, _ = dev.supplies.level(name, dev.config, self.profile, wall, None)
        return used >= cap or (name == "filter" and waterfilter.due(
            dev.meter.c, self.profile, wall, protocol.setting(dev.config, "water_hardness_dh"))
            is not None)

    async def hour(self, day: int, hour: int) -> None:
        from app import wallclock

        plan = self.plan
        if plan.approve_after_h is not None and plan.settings.get("ask_first"):
            ledger = self.cloud.ledger
            for o in ledger.orders(DEVICE) or []:
                if o["status"] == "needs_approval" and self.wall() - _epoch(
                        o["requested_at"]) >= plan.approve_after_h * 3600:
                    ledger.approve(DEVICE, o["order"], True)
        self.owner()
        now = self.clock.ticks_ms()
        if self.syncer.schedule.is_due(now):
            self.link.ok = plan.online(day, hour)
            wallclock.set_unix(self.wall())
            if await self.syncer.sync_once() != "ok":
                self.out.report_failures += 1
            self.out.reports += 1

    async def day(self, d: int, rng: random.Random, cut_hours: set[int]) -> None:
        day0 = d * DAY_MS
        script = Script(self.profile, start_ms=max(day0, self.clock.ms))
        _day(script, rng, d % 7, self.plan.usage(d))
        events = sorted(script.events)
        wakeups = [(day0 + h * HOUR_MS, h) for h in range(24)]
        k = 0
        for t, h in wakeups:
            while k < len(events) and events[k][0] < t:
                self.play(events[k])
                k += 1
            replay.tick(self.device, self.at(t))
            if d * 24 + h in cut_hours:  # power cut: RAM is gone, the flash stays
                self.device, self.syncer = self.boot()
                self.out.power_cuts += 1
            await self.hour(d, h)
        for e in events[k:]:
            self.play(e)

    def play(self, e: tuple[int, int, int, int]) -> None:
        from app.meter import BREW

        t, op, a, b = e
        tw = self.at(t)
        dev = self.device

        def on_event(code: int, i: int) -> None:
            dev.event(code, i, tw)
            if code == BREW:
                self.owner()

        if op == replay.POWERED:  # replay.tick counts powered time from the ticks itself
            op, a = replay.POWERED, 0
        replay.step(dev.meter, t, op, a, b, on_event)
        replay.tick(dev, tw)


async def run(profile: Any, plan: Plan) -> Outcome:
    from app import protocol, wallclock

    from brewmeter.cloud import CloudServer, Faults
    from brewmeter.cloud.ledger import Ledger
    from brewmeter.cloud.server import FAULT_KINDS

    rng = random.Random(plan.seed)
    clock = VirtualClock(ticks_start=replay.ticks(0))
    old = standins.clock
    standins.set_clock(clock)
    rates = {k: plan.net_faults / len(FAULT_KINDS) for k in FAULT_KINDS if k != "delay"}
    faults = Faults(seed=plan.seed, rates=rates, retry_after_s=0) if plan.net_faults else None
    hours = plan.days * 24
    cut_hours = set(rng.sample(range(1, hours), min(plan.power_cuts, hours - 1)))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Ledger(Path(tmp) / "ledger.db", synchronous="NORMAL",
                            now=lambda: START_WALL + clock.ms / 1000, merchant=plan.merchant)
            async with CloudServer(ledger, devices=[(DEVICE, KEY)], faults=faults) as cloud:
                if plan.settings:
                    ledger.set_config(DEVICE, plan.settings)
                home = _Home(plan, profile, MemFS(), cloud, clock)
                for d in range(plan.days):
                    await home.day(d, rng, cut_hours)
                    home.out.timeline.append(home.row(d))
                if faults:
                    faults.rates.clear()  # the network heals: let the device catch up
                home.link.ok = True
                for _ in range(5):
                    wallclock.set_unix(home.wall())
                    await home.syncer.sync_once()
                out = home.out
                dev = home.device
                out.counters = counters_summary(
                    dev.meter.c, profile, plan.days, home.wall(),
                    protocol.setting(dev.config, "water_hardness_dh"))
                out.supplies = dev.supplies.report(dev.config, profile, home.wall(),
                                                   dev.per_day(home.wall()))
                out.orders = ledger.orders(DEVICE) or []
                for ev in ledger.events(DEVICE):
                    if ev.get("kind") == "fault":
                        out.alerts[ev["code"]] += 1
                    elif ev.get("kind") == "order_requested":
                        out.requests.append(ev)
            ledger.close()
    finally:
        standins.set_clock(old)
        wallclock.synced = False
    return out


def _date(wall: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(wall, UTC).date().isoformat()


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def table(o: Outcome) -> str:
    """The year in a few lines: each consumable's orders, refills and level."""
    from app.supplies import ITEMS

    rows = [f"{'consumable':<10}  {'cycle':>5}  {'left':>5}  {'days':>5}  {'orders':>6}  "
            f"{'refills':>7}  {'stock-outs':>10}"]
    by_item = Counter(o_["item"] for o_ in o.orders)
    for name in ITEMS:
        s = o.supplies[name]
        days = "-" if s["days"] is None else s["days"]
        rows.append(f"{name:<10}  {s['cycle']:>5}  {s['pct']:>4}%  {days:>5}  "
                    f"{by_item[name]:>6}  {o.refills[name]:>7}  {o.stockouts[name]:>10}")
    statuses = Counter(x["status"] for x in o.orders)
    rows.append("orders: " + (", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
                              or "none"))
    rows.append("alerts: " + (", ".join(f"{n} {c}" for c, n in sorted(o.alerts.items()))
                              or "none"))
    return "\n".join(rows)
