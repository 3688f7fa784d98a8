"""The JSON API's handlers: the device's report (with injected faults), provisioning,
config, plans, queries and the owner's actions on orders, each in its role's scope. What a
service refuses (errors.Refused) is answered by the `answers` middleware with its status."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import date
from email.utils import formatdate
from typing import Any, NoReturn

from aiohttp import web

from brewmeter.cloud import auth, billing, quota, roles
from brewmeter.cloud.db import is_busy
from brewmeter.cloud.errors import Refused, SeqConflict, UnknownDevice
from brewmeter.cloud.faults import Faults
from brewmeter.cloud.report import MAX_BODY, MAX_INT, NAME, BadReport, loads, parse_report
from brewmeter.cloud.roles import LEDGER
from brewmeter.cloud.shared import protocol as P
from brewmeter.cloud.worker import Worker

log = logging.getLogger("brewmeter.cloud")

WORKER = web.AppKey("worker", Worker)
FAULTS = web.AppKey("faults", Faults)
QUOTA = web.AppKey("quota", quota.Quota)
LEVELS = web.AppKey("levels", dict[str, quota.Level])  # per device, in memory


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> web.Response:
    """An error reply. Its message is cut to the protocol's limit for texts, so no reply is
    over the device's limit, whatever a bad report quoted into it."""
    return web.json_response({"error": P.cut(message), **extra}, status=status,
                             headers=headers)




def _drop(request: web.Request) -> NoReturn:
    """Close the connection without a reply (aiohttp's way: the handler is 'cancelled')."""
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError


def _admin(request: web.Request, operator: bool = False) -> str:
    """The caller, if their role may do this to the device (see roles.require)."""
    return roles.require(request, request.match_info.get("id"), operator)


async def _json_body(request: web.Request) -> Any:
    try:
        return loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, f"body over {MAX_BODY} bytes") from None
    except ValueError as e:
        raise Refused(400, f"not JSON: {e}") from None


def _date_param(request: web.Request, name: str, default: date | None) -> date:
    v = request.query.get(name)
    if v is None:
        if default is None:
            raise Refused(400, f"query parameter {name}=YYYY-MM-DD is required")
        return default
    try:
        return billing.parse_date(v)
    except ValueError as e:
        raise Refused(400, f"{name}: {e}") from None


def _range(request: web.Request, required: bool) -> tuple[date, date]:
    """[from, to], inclusive; `to` before `from` is an empty range (nothing in it)."""
    first = _date_param(request, "from", None if required else billing.FIRST_DATE)
    last = _date_param(request, "to", None if required else billing.LAST_DATE)
    return first, last


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "protocol": 1})


def signed(request: web.Request, dev: str, body: bytes) -> bool:
    """Whether the request is signed by device `dev` over `body` (a report's body, a
    download's Range), with a key it may sign with now (protocol.yaml: "Signing")."""
    keys = request.app[LEDGER].signing_keys(dev, request.headers.get(P.KEY_HEADER))
    seq, sig = request.headers.get(auth.SEQ_HEADER), request.headers.get(auth.SIG_HEADER)
    return seq is not None and sig is not None and any(
        auth.verify(k, request.method, request.rel_url.raw_path, seq, body, sig)
        for k in keys)


async def report(request: web.Request) -> web.StreamResponse:
    app, dev = request.app, request.match_info["id"]
    worker, faults = app[WORKER], app.get(FAULTS)
    fault = faults.draw(dev, request.headers.get(auth.SEQ_HEADER)) if faults else None
    if fault == "restart":
        await worker.restart()
    elif fault == "drop_before":
        _drop(request)
    elif fault and fault.startswith("error_"):
        assert faults is not None
        return _error(int(fault[-3:]), "injected fault: nothing was stored",
                      headers={"Retry-After": str(faults.retry_after_s)})

    if (request.content_length or 0) > MAX_BODY:
        return _error(413, f"body over {MAX_BODY} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body over {MAX_BODY} bytes")
    if not signed(request, dev, body):
        return _error(401, "unknown device, or missing or bad signature")
    try:
        rep = parse_report(body, request.headers.get(auth.SEQ_HEADER))
    except BadReport as e:
        return _error(400, str(e))
    levels = app[LEVELS]
    levels[dev], wait = quota.take(app[QUOTA], levels.get(dev), app[LEDGER].now(),
                                   quota.rows(rep))
    if wait:
        return _error(429, f"over this device's quota of reports or rows: try in {wait} s",
                      headers={"Retry-After": str(wait)})
    if fault == "delay":  # received whole, then slow: the device times out, the cloud stores
        assert faults is not None
        await asyncio.sleep(faults.delay_s)

    try:
        if fault == "duplicate":
            reply, _ = await asyncio.gather(worker.report(dev, rep), worker.report(dev, rep))
        else:
            reply = await worker.report(dev, rep)
    except SeqConflict as e:
        return _error(409, str(e), seq=e.highest)
    except UnknownDevice:
        return _error(401, "unknown device")
    except Exception as e:
        if is_busy(e):
            raise  # the middleware's 503
        log.exception("report from %s failed", dev)
        return _error(500, "internal error: nothing of this report was stored")

    data = reply.encode()
    if fault == "drop_after":
        _drop(request)
    if fault == "truncate":
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[:len(data) // 2])
        _drop(request)
    if fault == "garbage":
        assert faults is not None
        return web.Response(body=faults.garbage(), content_type="application/json")
    return web.Response(body=data, content_type="application/json")


async def provision(request: web.Request) -> web.Response:
    who = _admin(request, operator=True)
    d = await _json_body(request)
    dev = request.match_info["id"]
    key = d.get("key") if isinstance(d, dict) else None
    if not isinstance(key, str):
        raise Refused(400, 'expected {"key": "<64 hex digits>"}')
    assert isinstance(d, dict)
    if d.get("key_id", "") is None or not isinstance(d.get("overlap_s", 0), int):
        raise Refused(400, "key_id: a name; overlap_s: whole seconds")
    new = await request.app[WORKER].call(request.app[LEDGER].add_device, dev, key,
                                         d.get("key_id"), d.get("overlap_s", 0))
    await request.app[WORKER].call(request.app[LEDGER].audit, who, dev,
                                   "provision" if new else "re-key",
                                   f"key id {d.get('key_id')}, overlap {d.get('overlap_s', 0)} s")
    return web.json_response({"id": dev, "created": new}, status=201 if new else 200)


async def put_config(request: web.Request) -> web.Response:
    who = _admin(request, operator=True)
    d = await _json_body(request)
    if not isinstance(d, dict) or not isinstance(d.get("settings"), dict) or len(d) != 1:
        raise Refused(400, 'expected {"settings": {...}}')
    # (BadSettings 400; NotForThisDevice 409: valid settings, but not this device's kinds)
    out = await request.app[WORKER].call(request.app[LEDGER].set_config,
                                         request.match_info["id"], d["settings"])
    await request.app[WORKER].call(request.app[LEDGER].audit, who, request.match_info["id"],
                                   "config",
                                   f"version {out['version']}: {json.dumps(d['settings'])}")
    return web.json_response(out)


async def put_plan(request: web.Request) -> web.Response:
    who = _admin(request, operator=True)
    d = await _json_body(request)
    out = await request.app[WORKER].call(request.app[LEDGER].set_plan,
                                         request.match_info["id"], d)
    await request.app[WORKER].call(request.app[LEDGER].audit, who, request.match_info["id"],
                                   "plan", json.dumps(d))
    return web.json_response(out)


async def _query(request: web.Request, fn: Callable[..., Any], *args: Any) -> web.Response:
    _admin(request)
    out = await request.app[WORKER].call(fn, request.match_info["id"], *args)
    if out is None:
        raise UnknownDevice(request.match_info["id"])
    return web.json_response(out)


async def get_device(request: web.Request) -> web.Response:
    return await _query(request, request.app[LEDGER].device)


async def get_days(request: web.Request) -> web.Response:
    return await _query(request, request.app[LEDGER].days, *_range(request, required=False))


EVENTS_MAX = 1000  # events per query page


async def get_events(request: web.Request) -> web.Response:
    try:
        after = max(-1, min(int(request.query.get("after", -1)), MAX_INT))  # any integer
        limit = int(request.query.get("limit", EVENTS_MAX))
    except ValueError:
        raise Refused(400, "after and limit are integers") from None
    if not 1 <= limit <= EVENTS_MAX:
        raise Refused(400, f"limit: 1 to {EVENTS_MAX}")
    return await _query(request, request.app[LEDGER].events, after, limit)


async def get_orders(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    return await _query(request, lambda dev: (None if (o := ledger.orders(dev)) is None
                                              else {"orders": o}))


async def _owner(request: web.Request, fn: Callable[..., Any], *args: Any,
                 action: str = "") -> web.Response:
    """An owner's action on the device's orders or supplies: 404 unknown, 409 not now.
    Written to the audit log as `action` (with the order or the item)."""
    who = _admin(request)
    out = await request.app[WORKER].call(fn, request.match_info["id"], *args)
    await request.app[WORKER].call(request.app[LEDGER].audit, who, request.match_info["id"],
                                   action, str(args[0]))
    return web.json_response(out)


async def approve_order(request: web.Request) -> web.Response:
    return await _owner(request, request.app[LEDGER].approve, request.match_info["order"],
                        True, action="approve")


async def decline_order(request: web.Request) -> web.Response:
    return await _owner(request, request.app[LEDGER].approve, request.match_info["order"],
                        False, action="decline")


async def post_refill(request: web.Request) -> web.Response:
    _admin(request)
    d = await _json_body(request)
    item = d.get("item") if isinstance(d, dict) else None
    if not isinstance(item, str) or not NAME.fullmatch(item) or len(d) != 1:
        raise Refused(400, 'expected {"item": "<name>"}')
    return await _owner(request, request.app[LEDGER].refill, item, action="refill")


async def get_invoice(request: web.Request) -> web.Response:
    # (billing.NoPlan: 409)
    return await _query(request, request.app[LEDGER].invoice, *_range(request, required=True))


BUSY_RETRY_S = 2


def reply_headers(now: Callable[[], float]) -> Callable[[web.Request, web.StreamResponse],
                                                      Awaitable[None]]:
    """The hook that finishes each reply's headers as it is prepared: the Date devices
    cross-check their clock against, from `now` (the ledger's clock: the harness runs it
    virtual), formatted once a second, not per reply; and no Server (aiohttp's "Python/3.x
    aiohttp/3.x": no client reads it, and a device pays every byte of a reply)."""
    shown: list[Any] = [None, ""]  # (second, its Date)

    async def hook(_: web.Request, resp: web.StreamResponse) -> None:
        if shown[0] != (second := int(now() // 1)):
            shown[:] = second, formatdate(second, usegmt=True)
        resp.headers["Date"] = shown[1]
        resp.headers.popall("Server", None)

    return hook


@web.middleware
async def answers(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """What a service refused (errors.Refused), answered with its status and its words."""
    try:
        return await handler(request)
    except Refused as e:
        return _error(e.status, e.answer, **e.extra)


@web.middleware
async def busy_is_503(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """A ledger locked by another process (SQLite busy past the ledger's busy timeout) is
    a 503 with Retry-After, never a 500: nothing was stored, and trying later will work."""
    try:
        return await handler(request)
    except Exception as e:
        if not is_busy(e):
            raise
        log.warning("ledger busy: %s %s answered 503", request.method, request.path)
        return _error(503, "the ledger is busy: nothing was stored, try again later",
                      headers={"Retry-After": str(BUSY_RETRY_S)})
