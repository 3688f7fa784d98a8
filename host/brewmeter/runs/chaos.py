"""`brewmeter chaos`: the device (its firmware under CPython) against the emulated cloud over
real HTTP on 127.0.0.1, with network faults injected into the cloud's replies and power
cuts, interleaved with brews and filter changes. Afterwards, with the network healthy again,
the cloud's ledger must hold exactly the device's counts: none lost, none doubled; and the
invoice must be the brews times the price."""

from __future__ import annotations

import asyncio
import random
import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from brewmeter.profiles import load_profile
from brewmeter.standins.hostfs import DirFS

if TYPE_CHECKING:  # the firmware: imported where used (see profiles.py)
    from app.device import Device
    from app.synctask import Syncer

DEVICE = "bm-chaos01"
KEY = "5a" * 32
PRICE_CENTS = 35
WALL0 = 1_767_571_200  # 2026-01-05 00:00 UTC


@dataclass
class Result:
    faults: int
    reports: int
    power_cuts: int
    device_brews: int
    cloud_brews: int
    billed_brews: int
    invoice_cents: int
    events_created: int
    events_in_cloud: int
    lost: int
    duplicated: int
    # fault kind -> {"injected": n, "device saw": {sync result: n}}: what each kind did
    by_kind: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.lost == self.duplicated == 0 and self.billed_brews == self.device_brews
                and self.invoice_cents == self.device_brews * PRICE_CENTS
                and self.events_in_cloud == self.events_created)


def _brew(dev: Device, kind: int, now: int) -> int:
    """A 25 s brew on input `kind` from ticks `now`, fed to the Meter as the sensor task
    feeds it (each level held past the debounce); returns the ticks after it."""
    deb = dev.profile.debounce_ms
    for level, t in ((0, 0), (1, 1), (1, 1 + deb), (0, 25_001), (0, 25_001 + deb)):
        r = dev.meter.sample(kind, level, now + t)
        if r:
            dev.event(r, kind, now + t)
    return now + 25_001 + deb


class _Loopback:
    async def up(self) -> None:
        return None


async def run(faults: int = 1000, seed: int = 0) -> Result:
    from app import wallclock
    from app.device import Device
    from app.synctask import wire

    from brewmeter.cloud import CloudServer, Faults
    from brewmeter.cloud.ledger import Ledger
    from brewmeter.cloud.server import FAULT_KINDS

    rng = random.Random(seed)
    profile = load_profile("emulator")
    rates = {k: 0.6 / len(FAULT_KINDS) for k in FAULT_KINDS}  # 60 % of requests go wrong
    cloud_faults = Faults(seed=seed, rates=rates, delay_s=0.15, retry_after_s=0)
    wall = [WALL0 + 8 * 3600]
    events_created = reports = cuts = 0
    saw: dict[str, Counter[str]] = {k: Counter() for k in FAULT_KINDS}
    with tempfile.TemporaryDirectory() as d:
        fs = DirFS(Path(d))
        ledger = Ledger(Path(d) / "ledger.db", now=lambda: wall[0])  # the cloud's clock too
        async with CloudServer(ledger, devices=[(DEVICE, KEY)], faults=cloud_faults) as cloud:
            cloud.ledger.set_plan(DEVICE, {"price_per_brew": PRICE_CENTS / 100})

            def boot() -> tuple[Device, Syncer]:
                dev = Device(profile, fs)
                dev.boot(1, 0)
                s = wire(dev, {"device_id": DEVICE, "key": KEY, "cloud_url": cloud.url,
                               "ntp": ""}, _Loopback(), wall=lambda: wall[0])  # set below
                s.timeout_ms = 100  # the cloud's "delay" fault outlasts it
                return dev, s

            device, syncer = boot()
            ticks = 0
            wallclock.set_unix(wall[0])
            try:
                while len(cloud_faults.log) < faults:
                    r = rng.random()
                    if r < 0.45:  # a brew
                        ticks = _brew(device, rng.randrange(len(profile.kinds)), ticks)
                    elif r < 0.47:
                        device.refill("filter", "console", 0, wall[0])
                        events_created += 1
                    elif r < 0.52:  # power cut: RAM is gone, the flash is as it was
                        device, syncer = boot()
                        cuts += 1
                    elif r < 0.57:  # time passes: some nights go by offline
                        wall[0] += rng.choice((600, 3600, 6 * 3600, 86400))
                        wallclock.set_unix(wall[0])
                    else:
                        n = len(cloud_faults.log)
                        said = await syncer.sync_once()
                        for _, _, kind in cloud_faults.log[n:]:
                            saw[kind][_plain(said)] += 1
                        reports += 1
                cloud_faults.rates.clear()  # the network heals
                for _ in range(20):
                    if await syncer.sync_once() == "ok" and not device.outbox.events:
                        break
                dev_brews = device.meter.c.total_brews()
                got = cloud.ledger.device(DEVICE)
                cloud_brews = got["counters"].get("brews_total", 0)
                first = datetime.fromtimestamp(WALL0, UTC).date()
                last = datetime.fromtimestamp(wall[0], UTC).date()
                bill = cloud.ledger.invoice(DEVICE, first, last)
                events_in_cloud = len([e for e in cloud.ledger.events(DEVICE)
                                       if e.get("kind") == "filter_changed"])
            finally:
                wallclock.synced = False
        ledger.close()
    return Result(
        faults=len(cloud_faults.log), reports=reports, power_cuts=cuts,
        device_brews=dev_brews, cloud_brews=cloud_brews, billed_brews=bill["brews"],
        invoice_cents=bill["total_cents"], events_created=events_created,
        events_in_cloud=events_in_cloud, lost=max(0, dev_brews - cloud_brews),
        duplicated=max(0, cloud_brews - dev_brews),
        by_kind={k: {"injected": sum(c.values()), "device saw": dict(c)}
                 for k, c in saw.items()})


def _plain(result: str) -> str:
    """A sync result with its sizes and times as N (HTTP statuses kept), to count alike ones
    together."""
    return result if result.startswith("HTTP") else re.sub(r"\d+", "N", result)


# What the cloud does for each kind (cloud.server.Faults), in a line.
DOES = {
    "drop_before": "closes the connection before storing",
    "drop_after": "stores, then closes without a reply",
    "delay": "answers after the device's timeout (stores)",
    "error_500": "answers 500, stores nothing",
    "error_503": "answers 503, stores nothing",
    "error_429": "answers 429, stores nothing",
    "truncate": "stores, then sends half the reply",
    "garbage": "stores, then replies 200 with bytes that are not JSON",
    "duplicate": "applies the same report twice at once",
    "restart": "closes and reopens its ledger, then answers",
}


def text(r: dict) -> str:
    """What each fault kind did, the totals, and one plain PASS/FAIL line."""
    rows = [f"{'fault kind':<12} {'injected':>8}  what the cloud did / what the device saw"]
    for kind, d in r["by_kind"].items():
        saw = ", ".join(f"{n} {what}" for what, n in sorted(d["device saw"].items(),
                                                             key=lambda x: -x[1]))
        rows.append(f"{kind:<12} {d['injected']:>8}  {DOES.get(kind, '')} / {saw or '-'}")
    rows.append("")
    rows.append(f"{r['reports']} reports, {r['faults']} faults, {r['power_cuts']} power cuts; "
                f"device {r['device_brews']} brews, cloud {r['cloud_brews']}, billed "
                f"{r['billed_brews']} ({r['invoice_cents']} cents); filter changes "
                f"{r['events_created']} made, {r['events_in_cloud']} in the cloud")
    if r["ok"]:
        rows.append("PASS: every brew and event reached the cloud once, and the bill matches")
    else:
        rows.append(f"FAIL: {r['lost']} brews lost, {r['duplicated']} doubled, "
                    f"{r['events_created'] - r['events_in_cloud']} events missing, billed "
                    f"{r['billed_brews']} of {r['device_brews']}")
    return "\n".join(rows)


def main(faults: int, seed: int) -> dict:
    r = asyncio.run(run(faults, seed))
    return {**asdict(r), "ok": r.ok}
