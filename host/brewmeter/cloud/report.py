"""Protocol v1 report bodies: parsed and checked before anything touches the ledger, so a
malformed report is a 400 that changes nothing. Pure: no I/O, no clock."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from brewmeter.cloud.auth import SEQ
from brewmeter.cloud.shared import parse_order
from brewmeter.cloud.shared import protocol as P

MAX_BODY = P.MAX_BODY
MAX_FIELDS = P.MAX_FIELDS  # counters (or one bucket's fields) after flattening
MAX_DAYS = P.MAX_DAYS
MAX_EVENTS = P.MAX_EVENTS
MAX_ORDERS = P.MAX_ORDERS  # the report's open orders
MAX_SUPPLIES = P.MAX_SUPPLIES
MAX_INT = P.MAX_INT  # what every JSON parser reads exactly
CLOCK_MIN = P.CLOCK_MIN  # 2000-01-01: anything earlier is a clock that was never set
MAX_DAY = 200_000  # year 2517: a day number no parser trips on (the ledger bills at most
# protocol.DAY_AHEAD days past its own clock: see Ledger._days)

NAME = re.compile(f"[{re.escape(P.NAME_CHARS)}]{{1,{P.MAX_NAME}}}")
# A report's UpdateStatus (docs/updates.md): its states, and a fault code as its reason.
UPDATE_STATES = ("offered", "downloading", "verifying", "trial", "done", "failed")
FAULT = re.compile(r"update_[a-z_]{1,40}")
SUPPLY_FIELDS = {"cycle": MAX_INT, "pct": 100, "days": MAX_INT}  # field -> maximum


class BadReport(ValueError):
    """The body or its fields are malformed (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """Usage during one day (`day` set); or, while the clock was unknown, since `at_ms` of
    boot `boot`; or older buckets the device folded into one (`fold` set, `day` then the
    newest day in it, or None). Fields are flattened: {"brews": {"lungo": 1}} ->
    "brews.lungo"."""
    day: int | None
    boot: int | None
    at_ms: int | None
    fields: dict[str, int]
    fold: int | None = None


@dataclass(frozen=True, slots=True)
class Report:
    seq: int
    digest: bytes  # sha256 of the exact body: tells an idempotent retry from a replay
    fw: str | None
    boot: int
    uptime_ms: int
    clock: int  # unix seconds, 0 when the device does not know the time
    counters: dict[str, int]
    days: list[Bucket]
    events: list[dict[str, Any]]
    applied: int | None  # config version in force on the device
    rejected: tuple[int, str] | None
    orders: dict[str, str] = field(default_factory=dict)  # open order id -> device's status
    # item -> the fields it carries ({"cycle", "pct", "days"}; days None: no forecast)
    supplies: dict[str, dict[str, int | None]] = field(default_factory=dict)
    # The update the device has in hand (an UpdateStatus, checked), None: none; bad_update:
    # why the one it sent is not one (it is not recorded, and the counts merge all the same).
    update: dict[str, Any] | None = None
    bad_update: str | None = None

    @property
    def in_hand(self) -> bool:
        """Whether the device said it has an update in hand (even in a malformed status)."""
        return self.update is not None or self.bad_update is not None

    @property
    def event_ids(self) -> list[int]:
        return sorted({e["id"] for e in self.events})

    @property
    def order_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "order_requested"]


def _int(v: Any, what: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise BadReport(f"{what}: expected an integer in [{lo}, {hi}], got {v!r}")
    return v


_known: set[str] = set()  # names already checked: the same few arrive in every report


def _name(k: Any, what: str) -> str:
    if k not in _known:
        if not isinstance(k, str) or not NAME.fullmatch(k):
            raise BadReport(f"{what}: bad field name {k!r}")
        if len(_known) < 4096:
            _known.add(k)
    return k


def flatten(d: Any, what: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """{"brews": {"espresso": 3}, "water_ml": 300} -> {"brews.espresso": 3, "water_ml": 300}:
    integers, nested at most one level, names of [A-Za-z0-9_-]."""
    if not isinstance(d, dict):
        raise BadReport(f"{what}: expected an object")
    out: dict[str, int] = {}
    for k, v in d.items():
        if k in skip:
            continue
        _name(k, what)
        if type(v) is dict:
            for k2, v2 in v.items():
                if k2 not in _known:  # (the message's f-string only for a new name)
                    _name(k2, f"{what}.{k}")
                if type(v2) is not int or not 0 <= v2 <= MAX_INT:
                    _int(v2, f"{what}.{k}.{k2}")  # raises with the message
                out[f"{k}.{k2}"] = v2
        elif type(v) is int and 0 <= v <= MAX_INT:
            out[k] = v
        else:
            _int(v, f"{what}.{k}")
    if len(out) > MAX_FIELDS:
        raise BadReport(f"{what}: more than {MAX_FIELDS} fields")
    return out


def unflatten(fields: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in sorted(fields.items()):
        head, _, tail = k.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = v
        else:
            out[k] = v
    return out


def _bucket(b: Any, i: int) -> Bucket:
    what = f"days[{i}]"
    if not isinstance(b, dict):
        raise BadReport(f"{what}: expected an object")
    fields = flatten(b, what, skip=P.BUCKET_KEYS)
    if "fold" in b:  # older buckets folded into one: placed on `last` (0: unknown), estimated
        last = _int(b.get("last", 0), f"{what}.last", 0, MAX_DAY)
        return Bucket(last or None, None, None, fields, _int(b["fold"], f"{what}.fold"))
    if "day" in b:  # dated: boot/at_ms, if also sent, are only informative
        return Bucket(_int(b["day"], f"{what}.day", 0, MAX_DAY), None, None, fields)
    if "boot" not in b or "at_ms" not in b:
        raise BadReport(f"{what}: a bucket has either day, or boot and at_ms")
    # (A boot above the report's, or an at_ms past its uptime, is no device's: such a bucket
    # is kept like any, and placed no further than protocol.DAY_AHEAD: see Ledger._days.)
    return Bucket(None, _int(b["boot"], f"{what}.boot"), _int(b["at_ms"], f"{what}.at_ms"),
                  fields)


def _event(e: Any, i: int) -> dict[str, Any]:
    if not isinstance(e, dict):
        raise BadReport(f"events[{i}]: expected an object")
    _int(e.get("id"), f"events[{i}].id")
    kind = e.get("kind")
    if not isinstance(kind, str) or not NAME.fullmatch(kind):
        raise BadReport(f"events[{i}].kind: expected a name, got {kind!r}")
    if kind == "order_requested":
        _order_id(e.get("order"), f"events[{i}].order")
        item = e.get("item")
        if not isinstance(item, str) or not NAME.fullmatch(item):
            raise BadReport(f"events[{i}].item: expected a name, got {item!r}")
        _int(e.get("cycle"), f"events[{i}].cycle")
        _int(e.get("ask"), f"events[{i}].ask", 0, 1)
    return e


def _order_id(o: Any, what: str) -> str:
    if parse_order(o) is None:
        raise BadReport(f"{what}: expected an order id like coffee-3, got {o!r}")
    return o


def _orders(d: Any) -> dict[str, str]:
    if not isinstance(d, dict) or len(d) > MAX_ORDERS:
        raise BadReport(f"orders: expected an object of at most {MAX_ORDERS} orders")
    for k, v in d.items():
        _order_id(k, "orders")
        if not isinstance(v, str) or not NAME.fullmatch(v):
            raise BadReport(f"orders.{k}: expected a status, got {v!r}")
    return d


def _supplies(d: Any) -> dict[str, dict[str, int | None]]:
    if not isinstance(d, dict) or len(d) > MAX_SUPPLIES:
        raise BadReport(f"supplies: expected an object of at most {MAX_SUPPLIES} items")
    for k, v in d.items():
        _name(k, "supplies")
        if not isinstance(v, dict) or not v.keys() <= SUPPLY_FIELDS.keys():
            raise BadReport(f"supplies.{k}: expected an object of {sorted(SUPPLY_FIELDS)}")
        for f, x in v.items():
            if type(x) is not int or not 0 <= x <= SUPPLY_FIELDS[f]:
                if not (f == "days" and x is None):
                    _int(x, f"supplies.{k}.{f}", 0, SUPPLY_FIELDS[f])
    return d


def _config(c: Any) -> tuple[int | None, tuple[int, str] | None]:
    if c is None:
        return None, None
    if not isinstance(c, dict):
        raise BadReport("config: expected an object or null")
    applied = _int(c.get("applied"), "config.applied")
    rej = c.get("rejected")
    if rej is None:
        return applied, None
    if not isinstance(rej, dict):
        raise BadReport("config.rejected: expected an object")
    reason = rej.get("reason", "")
    if not isinstance(reason, str) or len(reason) > P.MAX_TEXT:
        raise BadReport(f"config.rejected.reason: expected a string of at most {P.MAX_TEXT} "
                        "characters")
    return applied, (_int(rej.get("version"), "config.rejected.version", 1), reason)


def update_status(u: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the UpdateStatus `u` as kept, None), or (None, why it is not one). Never raises: a
    status the cloud cannot read must not cost the report its counts."""
    if not isinstance(u, dict):
        return None, "update: expected an object"
    release, state = u.get("release"), u.get("state")
    if not isinstance(release, str) or not NAME.fullmatch(release):
        return None, "update.release: expected a release id"
    if state not in UPDATE_STATES:
        return None, f"update.state: expected one of {', '.join(UPDATE_STATES)}"
    out: dict[str, Any] = {"release": release, "state": state}
    at, reason = u.get("at"), u.get("reason")
    if at is not None:
        if type(at) is not int or not 0 <= at <= MAX_INT:
            return None, f"update.at: expected an integer in [0, {MAX_INT}]"
        out["at"] = at
    if reason is not None:
        if not isinstance(reason, str) or not FAULT.fullmatch(reason):
            return None, "update.reason: expected a fault code (update_...)"
        out["reason"] = reason
    return out, None


def _number(text: str) -> int | float:
    x = float(text)
    return int(x) if x.is_integer() else x  # 5.0 is the JSON integer 5


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every body: json.loads with hooks would build a new one per call.
_DECODER = json.JSONDecoder(parse_float=_number, parse_constant=_constant)


def loads(body: bytes | str) -> Any:
    """JSON as the cloud reads it: a number with an integral value is an integer (as JSON
    Schema says), NaN and Infinity are not JSON. Bytes are decoded as json.loads does."""
    if isinstance(body, bytes | bytearray):
        body = body.decode(json.detect_encoding(body), "surrogatepass")
    elif body.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", body, 0)
    return _DECODER.decode(body)


def parse_seq(header: str | None) -> int:
    if header is None or not SEQ.fullmatch(header):
        raise BadReport(f"X-Brewmeter-Seq: expected a decimal integer, got {header!r}")
    return int(header)


def parse_report(body: bytes, seq_header: str | None = None) -> Report:
    """The checked Report in `body`; BadReport if anything is malformed. `seq_header`, when
    given, must equal the body's seq (both are signed; they must not disagree)."""
    if len(body) > MAX_BODY:
        raise BadReport(f"body over {MAX_BODY} bytes")
    try:
        d = loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadReport(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise BadReport("expected a JSON object")
    seq = _int(d.get("seq"), "seq")
    if seq_header is not None and parse_seq(seq_header) != seq:
        raise BadReport(f"seq {seq} differs from X-Brewmeter-Seq {seq_header}")
    fw = d.get("fw")
    if fw is not None and (not isinstance(fw, str) or len(fw) > P.MAX_FW):
        raise BadReport(f"fw: expected a string of at most {P.MAX_FW} characters")
    boot = _int(d.get("boot"), "boot")
    uptime_ms = _int(d.get("uptime_ms"), "uptime_ms")
    clock = _int(d.get("clock"), "clock")
    if 0 < clock < CLOCK_MIN:
        raise BadReport("clock: before 2000 (send 0 while the time is unknown)")
    days = d.get("days", [])
    events = d.get("events", [])
    if not isinstance(days, list) or len(days) > MAX_DAYS:
        raise BadReport(f"days: expected a list of at most {MAX_DAYS} buckets")
    if not isinstance(events, list) or len(events) > MAX_EVENTS:
        raise BadReport(f"events: expected a list of at most {MAX_EVENTS} events")
    applied, rejected = _config(d.get("config"))
    update, bad_update = (None, None) if d.get("update") is None else update_status(
        d["update"])
    return Report(
        seq=seq, digest=hashlib.sha256(body).digest(), fw=fw, boot=boot, uptime_ms=uptime_ms,
        clock=clock, counters=flatten(d.get("counters"), "counters"),
        days=[_bucket(b, i) for i, b in enumerate(days)],
        events=[_event(e, i) for i, e in enumerate(events)],
        applied=applied, rejected=rejected, orders=_orders(d.get("orders", {})),
        supplies=_supplies(d.get("supplies", {})), update=update, bad_update=bad_update)
