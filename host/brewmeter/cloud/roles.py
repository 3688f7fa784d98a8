"""Who is asking, and what they may do. Two roles, each with bearer tokens of its own: the
operator (the maker: the admin token; every machine, provisioning, plans, owners) and an
owner (a token made by the operator; only the machines assigned to them: their orders,
rules, invoices). An owner asking for another owner's machine hears 404, as for a machine
that does not exist; an owner on an operator's endpoint hears 403. The JSON endpoints for
owners (a token issued or revoked: the operator's alone), assignments, rules and the audit
log are here too. `require_role` is the one check of a role, for the JSON API (the bearer
token) and the web console (the session's) alike."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from brewmeter.cloud.errors import Refused, UnknownDevice
from brewmeter.cloud.ledger import Ledger
from brewmeter.cloud.owners import OPERATOR, check_owner_name, token_hash
from brewmeter.cloud.report import loads

LEDGER = web.AppKey("ledger", Ledger)  # set by server.make_app
ADMIN_TOKEN = web.AppKey("admin_token", str)  # the operator's token
Call = Callable[..., Awaitable[Any]]
CALL = web.AppKey("ledger_call", Call)  # runs a function in the ledger's worker thread


def who_is(app: web.Application, token: str) -> str | None:
    """"operator", "owner:NAME", or None for a token that is neither."""
    if hmac.compare_digest(token.encode(), app[ADMIN_TOKEN].encode()):
        return OPERATOR
    owner = app[LEDGER].owner_of_token(token) if token else None
    return None if owner is None else "owner:" + owner


def holds(app: web.Application, who: str, h: str) -> bool:
    """Whether the token hashing to `h` still makes its bearer `who`: a console session keeps
    only that hash, so a new token for the owner, or a revoke, ends the session at once."""
    if who == OPERATOR:
        return hmac.compare_digest(h, token_hash(app[ADMIN_TOKEN]))
    return "owner:" + (app[LEDGER].owner_of_token_hash(h) or "") == who


def may_see(app: web.Application, who: str, device_id: str) -> bool:
    return who == OPERATOR or app[LEDGER].owner_of(device_id) == who[len("owner:"):]


def require_role(app: web.Application, who: str | None, device_id: str | None = None,
                 operator: bool = False) -> str:
    """`who` if their role may do this, else Refused: 401 nobody (no token, or an unknown
    one), 403 an owner on an operator's endpoint or page, 404 an owner on another's machine
    (as for one that does not exist)."""
    if who is None:
        raise Refused(401, "this endpoint needs Authorization: Bearer <operator or owner "
                      "token>")
    if operator and who != OPERATOR:
        raise Refused(403, "the operator's endpoint: an owner's token may not use it")
    if device_id is not None and not may_see(app, who, device_id):
        raise UnknownDevice(device_id)
    return who


def require(request: web.Request, device_id: str | None = None,
            operator: bool = False) -> str:
    """The caller (bearer token) if they may do this, else Refused (see require_role)."""
    got = request.headers.get("Authorization", "")
    who = who_is(request.app, got[7:]) if got.startswith("Bearer ") else None
    return require_role(request.app, who, device_id, operator)


async def _body(request: web.Request) -> Any:
    try:
        return loads(await request.read())
    except ValueError:
        raise Refused(400, "not JSON") from None


async def post_owner(request: web.Request) -> web.Response:
    """POST /v1/admin/owners {"name"}: a new owner (or a new token for one): {name, token}."""
    who = require(request, operator=True)
    d = await _body(request)
    name = d.get("name") if isinstance(d, dict) else None
    check_owner_name(name)
    assert isinstance(name, str)
    token = await request.app[CALL](request.app[LEDGER].add_owner, name, who)
    return web.json_response({"name": name, "token": token}, status=201)


async def delete_owner_token(request: web.Request) -> web.Response:
    """DELETE /v1/admin/owners/{name}/token: the owner's token stops working, their console
    sessions end; their machines stay assigned (POST /v1/admin/owners gives a new token)."""
    who = require(request, operator=True)
    name = request.match_info["name"]
    check_owner_name(name)
    await request.app[CALL](request.app[LEDGER].revoke_owner, name, who)
    return web.json_response({"name": name, "revoked": True})


async def put_owner(request: web.Request) -> web.Response:
    """PUT /v1/admin/devices/{id}/owner {"owner": NAME or null}."""
    dev = request.match_info["id"]
    who = require(request, operator=True)
    d = await _body(request)
    if not isinstance(d, dict) or set(d) != {"owner"} or not (
            d["owner"] is None or isinstance(d["owner"], str)):
        raise Refused(400, 'expected {"owner": "<name>" or null}')
    await request.app[CALL](request.app[LEDGER].assign, dev, d["owner"], who)
    return web.json_response({"id": dev, "owner": d["owner"]})


async def get_devices(request: web.Request) -> web.Response:
    """GET /v1/devices: the machines the caller may see."""
    who = require(request)
    return web.json_response({"devices": await request.app[CALL](
        request.app[LEDGER].device_ids, who)})


async def get_audit(request: web.Request) -> web.Response:
    dev = request.match_info["id"]
    require(request, dev)
    ledger = request.app[LEDGER]
    if ledger.device_key(dev) is None:
        raise UnknownDevice(dev)
    return web.json_response({"audit": await request.app[CALL](ledger.audit_log, dev)})


async def get_rules(request: web.Request) -> web.Response:
    dev = request.match_info["id"]
    require(request, dev)
    if request.app[LEDGER].device_key(dev) is None:
        raise UnknownDevice(dev)
    return web.json_response(await request.app[CALL](request.app[LEDGER].rules, dev))


async def put_rules(request: web.Request) -> web.Response:
    """PUT /v1/devices/{id}/rules {"rules": {...}, "paused": bool} (either or both)."""
    dev = request.match_info["id"]
    who = require(request, dev)
    d = await _body(request)
    if not isinstance(d, dict) or not d or set(d) - {"rules", "paused"} or not isinstance(
            d.get("paused", False), bool) or not isinstance(d.get("rules", {}), dict):
        raise Refused(400, 'expected {"rules": {...}, "paused": true or false}')
    try:
        out = await request.app[CALL](request.app[LEDGER].set_rules, dev, d.get("rules"),
                                      d.get("paused"), who)
    except ValueError as e:  # a rule, or the settings with it, the device would not take
        raise Refused(400, str(e)) from None
    return web.json_response(out)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/admin/owners", post_owner)
    r.add_delete("/v1/admin/owners/{name}/token", delete_owner_token)
    r.add_put("/v1/admin/devices/{id}/owner", put_owner)
    r.add_get("/v1/devices", get_devices)
    r.add_get("/v1/devices/{id}/audit", get_audit)
    r.add_get("/v1/devices/{id}/rules", get_rules)
    r.add_put("/v1/devices/{id}/rules", put_rules)
