"""`brewmeter conform`: does a backend keep docs/protocol.yaml? The firmware's own Device,
Syncer and HTTP client, on the virtual clock, live scripted device lives against the backend
at `url` (its real HTTP(S) endpoint), through a seeded fault proxy. Afterwards, with the
network healed, the backend's query API must show what the device counted. The verdict is
one JSON object naming every broken rule.

The proxy takes each report from the device as plain HTTP on 127.0.0.1, checks it against
the document's Report schema, and sends it on with the device's own HTTP client (app.http,
with the CA given by --ca): so every reply of the backend is read within the device's limits
(Content-Length, header lines and count, body size, timeout), and a reply the device could
not read is a broken rule, not a fault. Then it may spoil the exchange: drop the request or
the reply, hold the reply past the device's timeout, cut it short, answer garbage, send the
request twice at once, replay it later, or hold it back until after the next one. Each
device life runs in the past (its clock is set days before the backend's): the proxy moves
the reply's Date by the same offset, as the network stands in for time there. Then the
update endpoints: conformupdates.py."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from brewmeter import standins
from brewmeter.runs import lives
from brewmeter.runs.conformproxy import (
    DEVICE_TIMEOUT_MS,
    RULES,
    Admin,
    Proxy,
    Verdict,
    Violation,
)
from brewmeter.runs.conformupdates import UpdateCheck

HOUR_MS = 3_600_000
DAY_S = 86_400
PRICE = 0.35  # the plan conform sets: per brew
REFUSAL_RUN = 3  # this many refusals in a row is a run: a device locked out

class Life(lives.Life):
    """One device: the firmware's Device and Syncer on a virtual clock (lives.Life's
    wiring: brews, days of use, time passing), reporting through the proxy to the backend
    under test; `truth` is what was brewed, per true day."""

    def __init__(self, run: Conform, name: str) -> None:
        super().__init__(Path("."))  # (no reference cloud of its own: no ledger file)
        self.run, self.name = run, name
        self.id = f"cf-{run.tag}-{name}"
        self.key = secrets.token_hex(32)
        self.start = run.start_wall
        self.events: set[int] = set()  # every event id the device has had (this flash)
        self.clock_known = True
        self.desired: dict[str, Any] | None = None  # the last desired config the backend took
        self.orders = 0  # the backend's orders for this device, at the end
        self.declined = False  # the owner declined one
        self.filters: int | None = None  # the filter's cycle when refilled in the backend

    def wall(self) -> int:
        return self.start + self.clock.ms // 1000

    def boot(self, clock: bool = True) -> None:
        from app import http, wallclock
        from app.device import Device
        from app.synctask import wire

        wallclock.synced = False
        dev = Device(self.profile, self.fs)
        if clock:
            wallclock.set_unix(self.wall())
        else:
            self.clock_known = False  # NTP blocked: this boot's usage is undated
        dev.boot(1, self.ticks())
        base = http.parse_url(self.run.url)[3]
        s = wire(dev, {"device_id": self.id, "key": self.key, "ntp": "",
                       "cloud_url": f"http://127.0.0.1:{self.run.proxy.port}{base}"},
                 self.link)
        s.timeout_ms = DEVICE_TIMEOUT_MS
        self.device, self.syncer = dev, s

    async def sync(self) -> str:
        self.events |= {e["id"] for e in self.device.outbox.events}
        self.run.proxy.shift_s = self.wall() - int(time.time())
        self.run.proxy.spoilt = False
        r = await self.syncer.sync_once()
        self.results.append(r)
        if r not in ("ok", "seq conflict", "network down") and not r.startswith("HTTP ") \
                and not self.run.proxy.spoilt:
            self.run.note("reply_body", f"{self.name}: {r}", self.name)
        return r

    async def sync_if_due(self) -> str | None:
        return await self.sync() if self.syncer.schedule.is_due(self.ticks()) else None

    async def heal(self) -> None:
        self.link.ok = True
        rate, self.run.proxy.rate = self.run.proxy.rate, 0.0
        try:
            for _ in range(40):
                self.syncer.schedule.due = self.ticks()
                r = await self.sync()
                if r == "ok" and not self.device.days.more and not self.device.outbox.events:
                    break
                if r == "HTTP 429":  # the backend's quota runs on its own (real) clock
                    wait = min(self.syncer.schedule.ms_until_due(self.ticks()) / 1000,
                               self.run.patience_s)
                    self.run.patience_s -= wait
                    await asyncio.sleep(wait)
                self.advance(60_000)
            await self.sync()  # one more: any order status or config the last one brought
        finally:
            self.run.proxy.rate = rate


class _NoDevice(Exception):
    """The backend would not provision a device: no life can run."""


class Conform:
    def __init__(self, url: str, token: str, ca: str | None, seed: int,
                 rate: float = 0.2, patience_s: float = 300) -> None:
        """`rate`: the share of exchanges the proxy spoils; `patience_s`: how long in all
        (real seconds) to wait out the backend's 429s while a device catches up."""
        from app import tls

        self.url, self.token, self.seed = url, token, seed
        self.patience_s = patience_s
        self.ca = ca
        self.ssl = tls.context(ca) if ca else None
        self.rng = random.Random(seed)
        self.rate = rate
        self.tag = f"{seed}-{secrets.token_hex(3)}"  # a fresh device id per run
        today = int(time.time()) // DAY_S
        self.start_wall = (today - 100) * DAY_S + 6 * 3600  # lives run in the past
        self.violations: list[Violation] = []
        self.proxy: Proxy
        self.admin: Admin
        self._life = ""

    def note(self, rule: str, detail: str, life: str | None = None) -> None:
        v = Violation(rule, life or self._life, detail)
        if len([x for x in self.violations if x.rule == rule]) < 5:  # a few of each
            self.violations.append(v)

    # -- the lives ------------------------------------------------------------------------------

    async def new_life(self, name: str, clock: bool = True) -> Life:
        self._life = name
        life = Life(self, name)
        st, _ = await self.admin.call("PUT", f"/v1/admin/devices/{life.id}", {"key": life.key})
        if st not in (200, 201):
            self.note("admin", f"provisioning answered {st}")
            raise _NoDevice
        st, _ = await self.admin.call("PUT", f"/v1/admin/devices/{life.id}/plan",
                                      {"price_per_brew": PRICE})
        if st != 200:
            self.note("admin", f"setting the plan answered {st}")
        standins.set_clock(life.clock)
        life.boot(clock)
        return life

    async def desire(self, life: Life, settings: dict[str, Any], valid: bool) -> None:
        st, got = await self.admin.call("PUT", f"/v1/admin/devices/{life.id}/config",
                                        {"settings": settings})
        if valid and st == 200:
            life.desired = got
        elif valid:
            self.note("admin", f"a valid config {settings} answered {st}")
        elif st == 200:
            self.note("config_checked", f"accepted {json.dumps(settings)[:80]}")

    async def approve_all(self, life: Life) -> None:
        st, got = await self.admin.call("GET", f"/v1/devices/{life.id}/orders")
        orders = got.get("orders") if st == 200 and isinstance(got, dict) else None
        for o in orders if isinstance(orders, list) else []:
            if isinstance(o, dict) and o.get("status") == "needs_approval":
                # The owner declines the first (as if out of stock: the cycle has no order
                # until a refill) and approves the rest.
                say = "approve" if life.declined else "decline"
                st, _ = await self.admin.call(
                    "POST", f"/v1/admin/devices/{life.id}/orders/{o.get('order')}/{say}")
                life.declined = life.declined or (say == "decline" and st == 200)
                if st != 200:
                    self.note("admin", f"{say} answered {st}")

    async def life_daily(self) -> Life:
        life = await self.new_life("daily")
        for d in range(12):
            if d == 1:
                await self.desire(life, {"sync_interval_s": 43200, "lead_days": 3}, True)
            if d == 3:  # a power cut: RAM gone, flash as it was
                life.boot()
            if d == 4:
                await self.desire(life, {"lead_days": 999}, False)
            if d == 5:  # over the device's reply limit
                await self.desire(life, {f"s{i:030d}": i for i in range(200)}, False)
            if d == 7:
                await self.desire(life, {"lead_days": 7, "report_delay_s": 600}, True)
            await life.day(self.rng.randrange(2, 7))
        return life

    async def life_offline(self) -> Life:
        life = await self.new_life("offline70")
        for _ in range(3):
            await life.day(3)
        for d in range(70):
            if d % 25 == 24:
                life.reboot()
            await life.day(2, online=False)
        return life

    async def life_ntp_blocked(self) -> Life:
        life = await self.new_life("ntp_blocked", clock=False)
        for _ in range(2):
            await life.day(4)
        life.reboot()  # NTP answers again
        for _ in range(2):
            await life.day(3)
        return life

    async def life_flash(self) -> Life:
        life = await self.new_life("flash_replaced")
        for _ in range(4):
            await life.day(4)
        life.advance(HOUR_MS * (24 - life.wall() % DAY_S // 3600))  # to the next midnight
        life.lose_flash()
        life.events = set()
        for _ in range(4):
            await life.day(5)
        return life

    async def life_orders(self) -> Life:
        life = await self.new_life("orders")
        await self.desire(life, {"coffee_pack": 20, "lead_days": 30, "ask_first": 1,
                                 "sync_interval_s": 43200}, True)
        for d in range(16):
            await life.day(5)
            await self.approve_all(life)
            if d % 5 == 4:  # the owner puts in a new pack (the order's, or a shop's)
                life.device.refill("coffee", "owner", life.ticks())
            if d == 8:  # ... and a new filter, said in the backend: the reply's `refill`
                life.filters = life.device.supplies.cycle("filter")
                st, _ = await self.admin.call("POST", f"/v1/admin/devices/{life.id}/refill",
                                              {"item": "filter"})
                if st != 200:
                    self.note("admin", f"refill answered {st}")
        return life

    # -- the checks -------------------------------------------------------------------------

    async def check(self, life: Life) -> None:
        from app import protocol, synctask

        self._life = life.name
        a, dev_id = self.admin, life.id
        run = 0
        for r in life.results:
            run = run + 1 if r.startswith("HTTP ") and protocol.refused(int(r[5:8])) else 0
            if run >= REFUSAL_RUN:
                self.note("refusals", f"{run} refusals in a row: {r}")
                break
        st, got = await a.call("GET", f"/v1/devices/{dev_id}")
        if st != 200 or not isinstance(got, dict):
            self.note("admin", f"GET device answered {st}")
            return
        mine = synctask.usage(life.device)
        theirs = got.get("counters") or {}
        for k, v in mine.items():
            t = theirs.get(k)
            if life.flash_lost:  # the backend keeps the maximum of both flashes
                bad = not isinstance(t, type(v)) or (isinstance(v, int) and t < v)
            else:
                bad = t != v
            if bad:
                self.note("counters", f"{k}: device {v}, backend {t}")
        first = datetime.fromtimestamp(self.start_wall, UTC).date() - timedelta(days=1)
        last = datetime.now(UTC).date() + timedelta(days=1)
        st, days = await a.call("GET", f"/v1/devices/{dev_id}/days",
                                **{"from": first.isoformat(), "to": last.isoformat()})
        total = sum(life.truth.values())
        if st != 200 or not isinstance(days, dict):
            self.note("admin", f"GET days answered {st}")
        else:
            per_day = {d.get("day"): d.get("brews_total", 0) for d in days.get("days", [])}
            placed = sum(per_day.values())
            if placed != total:
                self.note("days", f"{placed} brews on days, {total} brewed")
            if life.clock_known and not life.flash_lost and life.name != "offline70":
                wrong = {d: (per_day.get(d, 0), n) for d, n in life.truth.items()
                         if per_day.get(d, 0) != n}
                if wrong:
                    self.note("days", f"days (backend, brewed): {dict(list(wrong.items())[:3])}")
        st, inv = await a.call("GET", f"/v1/devices/{dev_id}/invoice",
                               **{"from": first.isoformat(), "to": last.isoformat()})
        if st != 200 or not isinstance(inv, dict):
            self.note("admin", f"GET invoice answered {st}")
        elif inv.get("brews") != total or inv.get("total_cents") != round(total * PRICE * 100):
            self.note("invoice", f"{inv.get('brews')} brews, {inv.get('total_cents')} cents; "
                      f"{total} brewed x {round(PRICE * 100)}")
        await self._check_events(life)
        st, orders = await a.call("GET", f"/v1/devices/{dev_id}/orders")
        orders = orders.get("orders") if isinstance(orders, dict) else None
        if st == 200 and isinstance(orders, list):
            life.orders = len(orders)
            per = Counter((o.get("item"), o.get("cycle")) for o in orders)
            more = {k: n for k, n in per.items() if n > 1}
            if more:
                self.note("orders", f"orders per (item, cycle): {more}")
        else:
            self.note("admin", f"GET orders answered {st}")
        if life.filters is not None and life.device.supplies.cycle("filter") <= life.filters:
            self.note("refill", f"a refill said in the backend in filter cycle {life.filters} "
                      "never reached the device")
        if life.desired is not None:
            cfg = got.get("config") or {}
            want = life.desired.get("version")
            d = life.device
            if (d.config_version, d.config) != (want, life.desired.get("settings")) \
                    or cfg.get("applied") != want or life.syncer.rejected is not None:
                self.note("config", f"desired v{want}; device runs v{d.config_version}"
                          + (f", refused v{life.syncer.rejected[0]}: "
                             f"{life.syncer.rejected[1]}" if life.syncer.rejected else "")
                          + f"; backend says applied v{cfg.get('applied')}")

    async def _check_events(self, life: Life) -> None:
        seen: Counter[int] = Counter()
        after = -1
        for _ in range(100):
            st, page = await self.admin.call("GET", f"/v1/devices/{life.id}/events",
                                             after=str(after), limit="1000")
            if st != 200 or not isinstance(page, list):
                self.note("admin", f"GET events answered {st}")
                return
            if not page:
                break
            for e in page:
                seen[e.get("id")] += 1
            after = max(e.get("id", after) for e in page)
        twice = [i for i, n in seen.items() if n > 1]
        missing = sorted(life.events - set(seen))
        if twice:
            self.note("events", f"stored more than once: {twice[:5]}")
        if missing:
            self.note("events", f"never stored: {missing[:5]}")

    async def main(self) -> Verdict:
        from app import wallclock

        lives = (self.life_daily, self.life_offline, self.life_ntp_blocked, self.life_flash,
                 self.life_orders)
        old_clock = standins.clock
        names = []
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                    force_close=True)) as session, \
                    Proxy(self.url, self.ssl, self.seed, self.rate, self.note) as proxy:
                self.proxy, self.admin = proxy, Admin(session, self.url, self.token, self.ssl)
                for play in lives:
                    try:
                        life = await play()
                    except _NoDevice:
                        break
                    await life.heal()
                    await self.check(life)
                    names.append({"name": life.name, "id": life.id,
                                  "brews": sum(life.truth.values()),
                                  "syncs": len(life.results), "orders": life.orders})
                await UpdateCheck(session, self.url, self.ssl, self.admin, self.tag,
                                  self.note).run()  # its device, release and rollout
        finally:
            standins.set_clock(old_clock)
            wallclock.synced = False
        broken = sorted({v.rule for v in self.violations})
        return Verdict(ok=not broken, seed=self.seed, url=self.url, lives=names,
                       reports=self.proxy.reports, faults=dict(self.proxy.log), broken=broken,
                       violations=[{**asdict(v), "says": RULES[v.rule]}
                                   for v in self.violations])


def main(url: str, token: str, ca_pem: str | None = None, seed: int = 0,
         rate: float = 0.2) -> dict[str, Any]:
    ca = Path(ca_pem).read_text() if ca_pem else None
    return asdict(asyncio.run(Conform(url, token, ca, seed, rate).main()))
