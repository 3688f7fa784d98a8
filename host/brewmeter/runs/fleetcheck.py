"""What a fleet run measured (Outcome: rates, latency, the outage's peak and drain) and its
checks of the ledger against the machines (check)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brewmeter.cloud.ledger import Ledger

PRICE_CENTS = 35  # each machine's plan: this per brew


@dataclass
class Outcome:
    devices: int
    days: int
    seconds: float = 0.0  # real time of the run (the days, not the checks)
    fleet_cpu_s: float = 0.0  # CPU time of the machines' process over it
    cloud_cpu_s: float = 0.0  # ... and of the cloud's
    reports: int = 0  # answered 200
    requests: int = 0  # every attempt, refused ones too
    failures: int = 0
    latencies: list[float] = field(default_factory=list)  # of each 200, seconds
    per_hour: Counter[int] = field(default_factory=Counter)  # requests per virtual hour
    outage: tuple[int, int] | None = None
    restore_at: int | None = None  # the day the ledger was restored from a day-old backup
    drain_s: float | None = None  # from the outage's end until no machine owes a failed report
    checks: dict[str, Any] = field(default_factory=dict)
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> its counters
    period: tuple[date, date] | None = None  # the days billed
    db: str | Path | None = None  # the ledger, when kept (Plan.db)

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
            "fleet_cpu_s": round(self.fleet_cpu_s, 2), "cloud_cpu_s": round(self.cloud_cpu_s, 2),
            "device_days_per_s": round(self.devices * self.days / self.seconds, 1),
            "reports": self.reports, "requests": self.requests, "failures": self.failures,
            "reports_per_s": round(self.reports / self.seconds, 1),
            "latency_p50_ms": pct(0.5), "latency_p99_ms": pct(0.99),
            "outage": None if self.outage is None else
            {"day": self.outage[0], "hours": self.outage[1]},
            **self.rates(),
            "drain_s": self.drain_s,
            "restore_at_day": self.restore_at,
            **self.checks,
        }


def check(ledger: Ledger, machines: dict[str, dict[str, Any]], first: date, last: date
          ) -> dict[str, Any]:
    """The ledger against the machines (id -> its counters as a report carries them):
    counters that differ, brews billed that no machine counted (doubled) or counted but not
    billed (lost), and each month's invoice line against its brews and the price."""
    mismatched = lost = doubled = bad_months = months = estimated = 0
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
            estimated += sum(1 for d in days.get("days", []) if d["estimated"])
            if line["brews"] != day_brews or line["amount_cents"] != PRICE_CENTS * day_brews:
                bad_months += 1
            billed += line["brews"]
        billed += sum(a["brews"] for a in inv.get("adjustments", []))
        have = counters.get("brews_total", 0)
        lost += max(0, have - billed)
        doubled += max(0, billed - have)
    return {"counters_mismatched": mismatched, "lost_brews": lost, "doubled_brews": doubled,
            "invoice_months": months, "invoice_months_wrong": bad_months,
            "estimated_days": estimated,
            "ok": mismatched == lost == doubled == bad_months == 0}


def table(o: Outcome) -> str:
    d = o.json()
    rows = [f"{o.devices} machines, {o.days} days: {d['device_days_per_s']} device-days/s "
            f"({d['seconds']} s; CPU: the machines' process {d['fleet_cpu_s']} s, the "
            f"cloud's {d['cloud_cpu_s']} s)",
            f"reports: {o.reports} ({d['reports_per_s']}/s), {o.failures} failed; latency "
            f"p50 {d['latency_p50_ms']} ms, p99 {d['latency_p99_ms']} ms",
            f"steady: {d['steady_requests_per_h']} requests per virtual hour"]
    if o.outage:
        rows.append(f"outage: day {o.outage[0]}, {o.outage[1]} h; the hour after: "
                    f"{d['post_outage_requests_per_h']} requests, the day's peak hour "
                    f"{d['post_outage_peak_per_h']} ({d['post_outage_peak_ratio']}x steady); "
                    f"backlog drained in "
                    + ("-" if o.drain_s is None else f"{o.drain_s / 60:.0f} min"))
    if o.restore_at is not None:
        rows.append(f"restored: the ledger from its backup of day {o.restore_at - 1}, at the "
                    f"start of day {o.restore_at}")
    c = o.checks
    rows.append(f"checks: counters differ on {c['counters_mismatched']} machines, "
                f"{c['lost_brews']} brews lost, {c['doubled_brews']} doubled, "
                f"{c['invoice_months_wrong']} of {c['invoice_months']} invoice months wrong")
    rows.append("PASS" if c["ok"] else "FAIL")
    return "\n".join(rows)
