"""The cloud's web console: server-rendered pages (Jinja2, no script) for the operator and for
owners, under /console/. Sign in with a token once: the browser gets a session cookie
(HttpOnly, SameSite=Strict). One middleware (`guard`) checks every unsafe request (POST,
PUT, PATCH, DELETE) outside the JSON API before any handler runs: from this site (Origin, else
Referer), signed in, and carrying the session's CSRF token (sign-in: this site only), else
403. The JSON API (/v1/) takes bearer tokens, never the cookie. Every change goes through the same
ledger calls as the JSON API, and to the audit log. Pages refresh themselves every few
seconds (meta refresh), so a report shows within seconds of arriving."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from brewmeter.cloud.errors import Refused, UnknownDevice
from brewmeter.cloud.owners import OPERATOR, RULES, token_hash
from brewmeter.cloud.roles import CALL, LEDGER, holds, require_role, who_is
from brewmeter.cloud.web import views

COOKIE = "brewmeter_session"
SESSION_S = 12 * 3600  # a session lasts this long (host time), then sign in again
REFRESH_S = 5  # pages reload themselves this often


@dataclass
class Session:
    who: str
    token: str  # the SHA-256 of the token signed in with: it must still be `who`'s
    csrf: str
    until: float


SESSIONS = web.AppKey("console_sessions", dict[str, Session])
TEMPLATES = web.AppKey("console_templates", jinja2.Environment)


def _money(cents: int | None, currency: str = "") -> str:
    return "" if cents is None else f"{cents / 100:.2f} {currency}".strip()


def _when(iso: str | None) -> str:
    return "" if not iso else iso.replace("T", " ").replace("+00:00", " UTC")


def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("brewmeter.cloud.web", "templates"),
                             autoescape=True)
    env.filters["money"] = _money
    env.filters["when"] = _when
    return env


def _page(request: web.Request, name: str, status: int = 200, **ctx: Any) -> web.Response:
    s = _session(request)
    html = request.app[TEMPLATES].get_template(name).render(
        who=s.who if s else None, csrf=s.csrf if s else "", refresh=ctx.pop("refresh", None),
        **ctx)
    return web.Response(text=html, content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'none'; "
                                 "style-src 'unsafe-inline'; img-src data:; "
                                 "form-action 'self'; frame-ancestors 'none'",
                                 "X-Frame-Options": "DENY"})


def _session(request: web.Request) -> Session | None:
    """The request's session while it lasts and its token is still its holder's: a new
    token for the owner, or a revoke, ends every session signed in with the old one."""
    sid = request.cookies.get(COOKIE, "")
    s = request.app[SESSIONS].get(sid)
    if s is None or s.until < time.monotonic():
        return None
    if not holds(request.app, s.who, s.token):
        request.app[SESSIONS].pop(sid, None)
        return None
    return s


def _signed_in(request: web.Request) -> Session:
    s = _session(request)
    if s is None:
        raise web.HTTPSeeOther("/console/signin")
    return s


def _same_origin(request: web.Request) -> bool:
    """The request comes from a page of this site: its Origin, else its Referer, names it."""
    own = f"{request.scheme}://{request.host}"
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin == own
    ref = urlsplit(request.headers.get("Referer", ""))
    return bool(ref.scheme) and f"{ref.scheme}://{ref.netloc}" == own


UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API = "/v1/"  # the JSON API: bearer tokens only, no cookie, so no CSRF to guard against
SIGNIN = "/console/signin"  # the one unsafe request without a session: this site's, though
GUARDED = web.RequestKey("console_session", Session)  # set by `guard` for the handlers


@web.middleware
async def guard(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """Every unsafe request outside the JSON API, before its handler: posted from this site
    (else 403), and but for sign-in, by a live session with its CSRF token in the form."""
    if request.method not in UNSAFE or request.path.startswith(API):
        return await handler(request)
    if not _same_origin(request):
        raise web.HTTPForbidden(text="refused: a form posted from another site")
    if request.path == SIGNIN:
        return await handler(request)
    s = _session(request)
    if s is None:
        raise web.HTTPForbidden(text="refused: not signed in (or the session expired)")
    form = await request.post()  # kept by aiohttp: the handler reads it again for free
    if not hmac.compare_digest(str(form.get("csrf", "")), s.csrf):
        raise web.HTTPForbidden(text="refused: the form's CSRF token is not this session's")
    request[GUARDED] = s
    return await handler(request)


async def _form(request: web.Request) -> tuple[Session, Any]:
    """The session `guard` checked this request against, and its form."""
    return request[GUARDED], await request.post()


def _machine_id(request: web.Request, s: Session) -> str:
    dev = request.match_info["id"]
    require_role(request.app, s.who, dev)
    if request.app[LEDGER].device_key(dev) is None:
        raise UnknownDevice(dev)
    return dev


# -- pages -------------------------------------------------------------------------------

async def signin_page(request: web.Request) -> web.Response:
    return _page(request, "signin.html", error=None)


async def signin(request: web.Request) -> web.Response:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    who = who_is(request.app, token) if token else None
    if who is None:
        return _page(request, "signin.html", status=401,
                     error="That token is not an operator's or an owner's.")
    sid = secrets.token_urlsafe(24)
    sessions, now = request.app[SESSIONS], time.monotonic()
    for old in [k for k, v in sessions.items() if v.until < now]:  # expired: forget them
        del sessions[old]
    sessions[sid] = Session(who, token_hash(token), secrets.token_urlsafe(24),
                            time.monotonic() + SESSION_S)
    resp = web.HTTPSeeOther("/console/")
    resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/",
                    max_age=SESSION_S, secure=request.scheme == "https")
    raise resp


async def signout(request: web.Request) -> web.Response:
    request.app[SESSIONS].pop(request.cookies.get(COOKIE, ""), None)
    resp = web.HTTPSeeOther("/console/signin")
    resp.del_cookie(COOKIE, path="/")
    raise resp


def _live(request: web.Request) -> int | None:
    return None if request.query.get("live") == "0" else REFRESH_S


async def fleet_page(request: web.Request) -> web.Response:
    s = _signed_in(request)
    ledger = request.app[LEDGER]
    data = await request.app[CALL](views.fleet, ledger, s.who, ledger.now())
    return _page(request, "fleet.html", refresh=_live(request), live=_live(request), **data)


async def machine_page(request: web.Request) -> web.Response:
    s = _signed_in(request)
    dev = _machine_id(request, s)
    ledger = request.app[LEDGER]
    data = await request.app[CALL](views.machine, ledger, s.who, dev, ledger.now())
    return _page(request, "machine.html", refresh=_live(request), live=_live(request),
                 notice=NOTICES.get(request.query.get("done", "")), m=data)


def _operator(request: web.Request, s: Session) -> Session:
    require_role(request.app, s.who, operator=True)
    return s


async def owners_page(request: web.Request) -> web.Response:
    _operator(request, _signed_in(request))
    ledger = request.app[LEDGER]
    owners = await request.app[CALL](ledger.owners)
    log = await request.app[CALL](ledger.audit_log, None)
    name = request.query.get("name")  # said only of an owner whose token is revoked
    done = request.query.get("done") == "revoked" and any(
        o["name"] == name and o["revoked"] for o in owners)
    return _page(request, "owners.html", owners=owners, audit=log,
                 notice=NOTICES["revoked"].format(name=name) if done else None)


async def rollouts_page(request: web.Request) -> web.Response:
    _operator(request, _signed_in(request))
    data = await request.app[CALL](views.rollouts, request.app[LEDGER])
    return _page(request, "rollouts.html", refresh=_live(request), rollouts=data)


async def invoice_page(request: web.Request) -> web.Response:
    s = _signed_in(request)
    dev = _machine_id(request, s)
    month = request.query.get("month") or views.months_back(
        views.today_of(request.app[LEDGER].now()), 1)[0]
    try:
        inv = await request.app[CALL](views.invoice, request.app[LEDGER], dev, month)
    except ValueError as e:
        return _page(request, "invoice.html", status=400, id=dev, inv=None, error=str(e))
    return _page(request, "invoice.html", id=dev, inv=inv, error=None)


# -- changes -----------------------------------------------------------------------------

NOTICES = {"approved": "Order approved: it is placed now.", "declined": "Order declined.",
           "paused": "All ordering paused: the machine stops ordering after its next sync.",
           "resumed": "Ordering resumed: the machine applies it after its next sync.",
           "rules": "Rules saved: the machine applies them after its next sync.",
           "revoked": "{name}'s token is revoked: their sessions and API calls end now; "
                      "POST /v1/admin/owners gives them a new one."}


def _back(dev: str, done: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/console/machines/{dev}?live=0&done={done}")


async def decide(request: web.Request) -> web.Response:
    s, _ = await _form(request)
    dev = _machine_id(request, s)
    order, yes = request.match_info["order"], request.match_info["decision"] == "approve"
    ledger = request.app[LEDGER]
    await request.app[CALL](ledger.approve, dev, order, yes)
    await request.app[CALL](ledger.audit, s.who, dev, "approve" if yes else "decline", order)
    raise _back(dev, "approved" if yes else "declined")


async def pause(request: web.Request) -> web.Response:
    s, form = await _form(request)
    dev = _machine_id(request, s)
    paused = form.get("paused") == "1"
    await request.app[CALL](request.app[LEDGER].set_rules, dev, None, paused, s.who)
    raise _back(dev, "paused" if paused else "resumed")


async def set_rules(request: web.Request) -> web.Response:
    s, form = await _form(request)
    dev = _machine_id(request, s)
    rules: dict[str, int] = {}
    for name in RULES:
        if name.startswith("auto_") or name == "ask_first":
            rules[name] = 1 if form.get(name) == "1" else 0  # a checkbox: absent when off
            continue
        v = str(form.get(name, "")).strip()
        try:
            rules[name] = int(v)
        except ValueError:
            raise web.HTTPBadRequest(text=f"{name}: expected a whole number, got {v!r}: "
                                     "nothing changed") from None
    try:
        await request.app[CALL](request.app[LEDGER].set_rules, dev, rules, None, s.who)
    except ValueError as e:
        raise web.HTTPBadRequest(text=f"{e}: nothing changed") from None
    raise _back(dev, "rules")


async def revoke(request: web.Request) -> web.Response:
    s, _ = await _form(request)
    _operator(request, s)
    name = request.match_info["name"]
    await request.app[CALL](request.app[LEDGER].revoke_owner, name, s.who)
    raise web.HTTPSeeOther(f"/console/owners?done=revoked&name={name}")


@web.middleware
async def error_pages(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """A refusal or an error on a console page is a page too (the status kept)."""
    try:
        return await handler(request)
    except Refused as e:  # what a service or a role check refused
        if not request.path.startswith("/console/"):
            raise
        return _page(request, "error.html", status=e.status, message=e.answer, code=e.status)
    except web.HTTPException as e:
        if e.status < 400 or not request.path.startswith("/console/"):
            raise
        return _page(request, "error.html", status=e.status, message=e.text or e.reason,
                     code=e.status)


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/console/")


def add_routes(app: web.Application) -> None:
    """The console's pages on `app` (which has the ledger, and roles.CALL)."""
    app[SESSIONS] = {}
    app[TEMPLATES] = templates()
    app.middlewares.extend((error_pages, guard))  # guard's refusals are pages too
    r = app.router
    r.add_get("/", home)
    r.add_get("/console/signin", signin_page)
    r.add_post("/console/signin", signin)
    r.add_post("/console/signout", signout)
    r.add_get("/console/", fleet_page)
    r.add_get("/console/machines/{id}", machine_page)
    r.add_get("/console/machines/{id}/invoice", invoice_page)
    r.add_get("/console/owners", owners_page)
    r.add_get("/console/rollouts", rollouts_page)
    r.add_post("/console/owners/{name}/revoke", revoke)
    r.add_post("/console/machines/{id}/orders/{order}/{decision:approve|decline}", decide)
    r.add_post("/console/machines/{id}/pause", pause)
    r.add_post("/console/machines/{id}/rules", set_rules)


__all__ = ["OPERATOR", "add_routes", "templates"]
