"""What the ledger's services hand around: the reply to a report, desired settings checked,
days and orders as the query API shows them. (Their errors: errors.py.)"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from brewmeter.cloud import merchant
from brewmeter.cloud.errors import BadSettings
from brewmeter.cloud.report import Report
from brewmeter.cloud.shared import protocol as P
from brewmeter.cloud.tables import EPOCH, Keys


def _without(r: Report, fields: set[str]) -> Report:
    return replace(r, counters={f: v for f, v in r.counters.items() if f not in fields})


def _keys(key: str, key_id: str | None, old: str | None, old_id: str | None,
          until: float | None) -> Keys:
    cur = ((key_id, bytes.fromhex(key), None),)
    return cur + ((old_id, bytes.fromhex(old), until),) if old else cur


@dataclass(slots=True)
class Reply:
    ack: list[int]
    seq: int
    config: dict[str, Any] | None
    orders: dict[str, str] = field(default_factory=dict)  # order id -> the cloud's status
    refill: dict[str, int] = field(default_factory=dict)  # item -> cycle the owner refilled
    duplicate: bool = False  # an idempotent retry: nothing was applied
    update: dict[str, Any] | None = None  # an UpdateOffer (docs/updates.md)

    def json(self, limit: int = P.MAX_REPLY) -> dict[str, Any]:
        """The reply's JSON, encoded (compact) in at most `limit` bytes: `ack`, `seq` and
        `config` always (bounded by the protocol's limits and by set_config); then the
        update offered if it fits, then as many orders and refills as fit. The rest follow
        in later replies: an offer is made while the device has no update in hand, the
        device names its open orders again, and a refill is sent until the device shows a
        later cycle."""
        return self._fitted(limit)[0]

    def encode(self, limit: int = P.MAX_REPLY) -> bytes:
        return self._fitted(limit)[1]

    def _fitted(self, limit: int) -> tuple[dict[str, Any], bytes]:
        """json() and its encoding (encoded once when it all fits: every reply but a few)."""
        out: dict[str, Any] = {"ack": self.ack, "seq": self.seq, "config": self.config}
        if self.update:
            out["update"] = self.update
        if self.orders:
            out["orders"] = self.orders
        if self.refill:
            out["refill"] = self.refill
        data = _compact(out)
        if len(data) <= limit:
            return out, data
        out = {"ack": self.ack, "seq": self.seq, "config": self.config}
        if self.update and len(_compact({**out, "update": self.update})) <= limit:
            out["update"] = self.update
        for key, entries in (("orders", self.orders), ("refill", self.refill)):
            part: dict[str, Any] = {}
            for k, v in sorted(entries.items()):
                part[k] = v
                if len(_compact({**out, key: part})) > limit:
                    del part[k]
                    break
            if part:
                out[key] = part
        return out, _compact(out)


def _compact(d: Any) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


# The most `ack` and `seq` take in a reply (every event id and the seq at their longest), so
# desired settings get the rest of the device's reply limit, less room for the keys.
ACK_MAX = len(_compact({"ack": [P.MAX_INT] * P.MAX_EVENTS, "seq": P.MAX_INT, "config": None}))
CONFIG_MAX = P.MAX_REPLY - ACK_MAX - 64


def check_desired(settings: Any) -> dict[str, Any]:
    """`settings` if a device can take them: the protocol's schema, and a reply that fits
    the device's limit whatever else it carries. Else BadSettings with the reason. (Which
    brew kinds a per-kind setting may name depends on the device: see set_config.)"""
    reason = P.check_settings(settings)
    if reason is None and len(_compact({"version": P.MAX_INT, "settings": settings})) > \
            CONFIG_MAX:
        reason = f"settings over {CONFIG_MAX} bytes: no reply could carry them"
    if reason is not None:
        raise BadSettings(reason)
    return settings


def _brews(fields: dict[str, int]) -> int:
    """A bucket's brews: by kind when it has them, else its total (the firmware sends only
    the day's total: brews by kind per day would cost flash on every brew)."""
    by_kind = [v for f, v in fields.items() if f.startswith("brews.")]
    return sum(by_kind) if by_kind else fields.get("brews_total", 0)


def day_number(d: date) -> int:
    return (d - EPOCH).days


def day_date(n: int) -> date:
    return date.fromordinal(EPOCH.toordinal() + n)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _order(row: tuple[Any, ...], now: float) -> dict[str, Any]:
    """An orders row (ORDER_COLS) as the query API shows it at `now`."""
    oid, item, cycle, ask, st, requested, placed, declined, ship, deliver, reason = row
    return {"order": oid, "item": item, "cycle": cycle, "reason": reason,
            "status": merchant.status(st, ship, deliver, now), "ask": bool(ask),
            "requested_at": _iso(requested), "placed_at": _iso(placed),
            "shipped_at": _iso(ship) if st == "placed" and ship <= now else None,
            "delivered_at": _iso(deliver) if st == "placed" and deliver <= now else None,
            "declined_at": _iso(declined)}
