"""What each page of the web console shows, computed from the ledger at a time `now`: plain
dicts for the templates. Runs in the ledger's worker thread (every ledger call is there)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from brewmeter.cloud import billing
from brewmeter.cloud.ledger import Ledger
from brewmeter.cloud.owners import OPERATOR
from brewmeter.cloud.rollouts import STATES
from brewmeter.cloud.shared import ITEMS
from brewmeter.cloud.web import charts

CHART_DAYS = 90
STAGES = ("requested", "placed", "shipped", "delivered")


def today_of(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def ago(iso: str | None, now: float) -> str:
    """'never', 'just now', '5 min ago', '3 h ago', '2 days ago'."""
    t = _epoch(iso)
    if t is None:
        return "never"
    s = max(0, int(now - t))
    if s < 60:
        return "just now"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def _brews(ledger: Ledger, dev: str, first: date, last: date) -> dict[str, int]:
    days = ledger.days(dev, first, last) or {"days": []}
    return {d["date"]: d["brews_total"] for d in days["days"]}


def nearest_empty(supplies: dict[str, dict[str, int]]) -> dict[str, Any] | None:
    """The consumable that runs out first: fewest forecast days, else lowest level."""
    known = [(name, s) for name, s in supplies.items() if "pct" in s]
    if not known:
        return None
    name, s = min(known, key=lambda x: (x[1].get("days", 10**9), x[1]["pct"]))
    return {"item": name, "pct": s["pct"], "days": s.get("days")}


def fleet(ledger: Ledger, who: str, now: float) -> dict[str, Any]:
    today = today_of(now)
    month = today.replace(day=1)
    rows, waiting = [], []
    for dev in ledger.device_ids(who):
        d = ledger.device(dev)
        if d is None:
            continue
        brews = _brews(ledger, dev, month, today)
        rows.append({
            "id": dev, "owner": ledger.owner_of(dev), "last_seen": d["last_seen"],
            "ago": ago(d["last_seen"], now), "fw": d["fw"],
            "today": brews.get(today.isoformat(), 0), "month": sum(brews.values()),
            "faults": ledger.fault_count(dev, now - 30 * 86400),
            "nearest": nearest_empty(d["supplies"]),
            "paused": ledger.rules(dev)["paused"]})
        waiting += [{**o, "device": dev} for o in d["orders"]
                    if o["status"] == "needs_approval"]
    return {"machines": rows, "waiting": waiting, "month": month.strftime("%Y-%m"),
            "today": today.isoformat(), "operator": who == OPERATOR}


def _timeline(order: dict[str, Any]) -> list[dict[str, Any]]:
    """The order's stages with their times (None: not yet)."""
    return [{"stage": s, "at": order[f"{s}_at"]} for s in STAGES]


def machine(ledger: Ledger, who: str, dev: str, now: float) -> dict[str, Any] | None:
    d = ledger.device(dev)
    if d is None:
        return None
    today = today_of(now)
    first = today - timedelta(days=CHART_DAYS - 1)
    per_day = ledger.days(dev, first, today) or {"days": []}
    brews = {x["date"]: (x["brews_total"], x["estimated"]) for x in per_day["days"]}
    series = [(first + timedelta(days=i), *brews.get(
        (first + timedelta(days=i)).isoformat(), (0, False))) for i in range(CHART_DAYS)]
    supplies = []
    for item in ITEMS:
        s = d["supplies"].get(item, {})
        orders = [o for o in d["orders"] if o["item"] == item][-4:][::-1]
        supplies.append({"item": item, "pct": s.get("pct"), "days": s.get("days"),
                         "cycle": s.get("cycle"),
                         "orders": [{**o, "timeline": _timeline(o)} for o in orders]})
    rules = ledger.rules(dev)
    desired = d["config"]["desired"]
    return {
        "id": dev, "device": d, "owner": ledger.owner_of(dev), "ago": ago(d["last_seen"], now),
        "counters": flatten(d["counters"]),
        "chart": charts.bars(series), "chart_total": sum(b for _, b, _ in series),
        "supplies": supplies,
        "waiting": [o for o in d["orders"] if o["status"] == "needs_approval"],
        "events": list(ledger.recent_events(dev, 30)), "flags": d["flags"],
        "config": {"desired": desired, "applied": d["config"]["applied"],
                   "rejected": d["config"]["rejected"],
                   "in_effect": desired["version"] == (d["config"]["applied"] or 0)},
        "rules": rules, "consumables": ITEMS,
        "audit": ledger.audit_log(dev, 50), "updating": ledger.releasing.update_of(dev)["update"],
        "months": months_back(today, 3), "operator": who == OPERATOR}


def flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in sorted(d.items()):
        if isinstance(v, dict):
            out += flatten(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, v))
    return out


def months_back(today: date, n: int) -> list[str]:
    """This month and the n-1 before it, newest first, as YYYY-MM."""
    out, m = [], today.replace(day=1)
    for _ in range(n):
        out.append(m.strftime("%Y-%m"))
        m = (m - timedelta(days=1)).replace(day=1)
    return out


def parse_month(s: str) -> tuple[date, date]:
    """'YYYY-MM' -> its first and last day; ValueError if it is not one."""
    if len(s) != 7:
        raise ValueError(f"expected a month YYYY-MM, got {s!r}")
    first = billing.parse_date(s + "-01")
    return first, billing.next_month(first) - timedelta(days=1)


def invoice(ledger: Ledger, dev: str, month: str) -> dict[str, Any] | None:
    """The month's invoice as billing computes it; {'error': ...} if there is no plan."""
    first, last = parse_month(month)
    try:
        inv = ledger.invoice(dev, first, last)
    except billing.BadPlan as e:
        return {"id": dev, "month": month, "error": str(e)}
    return None if inv is None else {**inv, "month": month}


def rollouts(ledger: Ledger) -> list[dict[str, Any]]:
    """Each rollout's progress, newest first: its machines counted by update state (in
    rollouts.STATES' order), done as a share of them, and the failed ones with why."""
    out = []
    for brief in ledger.releasing.rollouts():
        r = ledger.releasing.rollout(brief["id"])
        states = [m["state"] for m in r["devices"]]
        r["counts"] = {s: states.count(s) for s in STATES if s in states}
        r["done_pct"] = round(100 * r["done"] / r["targets"]) if r["targets"] else 0
        r["failures"] = [m for m in r.pop("devices") if m["state"] == "failed"]
        out.append(r)
    return out
