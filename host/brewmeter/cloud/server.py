"""The emulated cloud over HTTP(S): the aiohttp app for protocol v1 (docs/protocol.yaml),
fault injection for chaos tests, and ways to run it: `CloudServer` (async context manager),
`cloud_thread` (for synchronous code), `run_cloud` / `cloud_main` (the `brewmeter cloud`
command, until SIGINT/SIGTERM)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import secrets
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from email.utils import formatdate
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

from aiohttp import web

from brewmeter.cloud import auth, billing, quota, roles
from brewmeter.cloud.ledger import (
    BadSettings,
    Ledger,
    NotForThisDevice,
    Reply,
    SeqConflict,
    StateConflict,
    UnknownDevice,
    UnknownOrder,
    is_busy,
)
from brewmeter.cloud.merchant import Merchant
from brewmeter.cloud.report import MAX_BODY, MAX_INT, NAME, BadReport, Report, loads, parse_report
from brewmeter.cloud.roles import ADMIN_TOKEN, LEDGER
from brewmeter.cloud.shared import protocol as P
from brewmeter.cloud.web import add_routes as _console_routes

log = logging.getLogger("brewmeter.cloud")
T = TypeVar("T")

FAULT_KINDS = ("drop_before", "drop_after", "delay", "error_500", "error_503", "error_429",
               "truncate", "garbage", "duplicate", "restart")


@dataclass
class Faults:
    """What goes wrong with each report request, deterministically: the scripted `queue`
    first (an entry of None lets one request through), then at random with the probabilities
    in `rates`, drawn from `seed`. Kinds:

    drop_before  close the connection before anything is stored
    drop_after   store (commit), then close the connection without a reply
    delay        sleep `delay_s` (past the device's timeout), then handle normally (stores)
    error_500 / error_503 / error_429   that status with Retry-After, nothing stored
    truncate     store, then send half the reply and close
    garbage      store, then reply 200 with bytes that are not JSON
    duplicate    apply the same report twice, concurrently (as a proxy resending it would)
    restart      close and reopen the ledger (a cloud restart), then handle normally
    """
    seed: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    queue: list[str | None] = field(default_factory=list)
    delay_s: float = 2.0
    retry_after_s: int = 1
    log: list[tuple[str, str | None, str]] = field(default_factory=list)  # device, seq, kind

    def __post_init__(self) -> None:
        self._check(list(self.rates) + self.queue)
        if sum(self.rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        self._rng = random.Random(self.seed)

    @staticmethod
    def _check(kinds: Iterable[str | None]) -> None:
        bad = {k for k in kinds if k is not None and k not in FAULT_KINDS}
        if bad:
            raise ValueError(f"unknown fault kinds {sorted(bad)} (known: {FAULT_KINDS})")

    def script(self, *kinds: str | None) -> Faults:
        """Queue these faults (None: no fault) for the next requests, in order."""
        self._check(kinds)
        self.queue.extend(kinds)
        return self

    def draw(self, device_id: str, seq: str | None) -> str | None:
        x = self._rng.random()  # drawn every time: scripted faults don't shift random ones
        kind = None
        if self.queue:
            kind = self.queue.pop(0)
        else:
            for k in FAULT_KINDS:  # a fixed order, so a seed always means the same faults
                p = self.rates.get(k, 0.0)
                if x < p:
                    kind = k
                    break
                x -= p
        if kind:
            self.log.append((device_id, seq, kind))
        return kind

    def garbage(self) -> bytes:
        return b"\xff<garbage>" + self._rng.randbytes(16)


class Worker:
    """The ledger's own thread. Every ledger call runs there, one at a time, off the event
    loop; reports that arrive while a batch is committing go together into the next batch
    (group commit: one fsync for many reports, each still durable before its reply)."""

    def __init__(self, ledger: Ledger, max_batch: int = 256) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._pending: list[tuple[tuple[str, Report], asyncio.Future[Reply]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def report(self, device_id: str, report: Report) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending.append(((device_id, report), fut))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                try:
                    results: list[Any] = await self.call(self.ledger.apply_batch,
                                                         [item for item, _ in batch])
                except Exception as e:  # the commit failed: none of the batch is stored
                    results = [e] * len(batch)
                self.batches += 1
                for (_, fut), r in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(r, Exception):
                        fut.set_exception(r)
                    else:
                        fut.set_result(r)
        finally:
            self._drainer = None

    async def restart(self) -> None:
        await self.call(self.ledger.reopen)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


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


class _Fail(web.HTTPException):
    """An error reply with a JSON body, raised from deep in a handler."""

    def __init__(self, status: int, message: str) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": P.cut(message)}),
                         content_type="application/json")


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
        raise _Fail(413, f"body over {MAX_BODY} bytes") from None
    except ValueError as e:
        raise _Fail(400, f"not JSON: {e}") from None


def _date_param(request: web.Request, name: str, default: date | None) -> date:
    v = request.query.get(name)
    if v is None:
        if default is None:
            raise _Fail(400, f"query parameter {name}=YYYY-MM-DD is required")
        return default
    try:
        return billing.parse_date(v)
    except ValueError as e:
        raise _Fail(400, f"{name}: {e}") from None


def _range(request: web.Request, required: bool) -> tuple[date, date]:
    """[from, to], inclusive; `to` before `from` is an empty range (nothing in it)."""
    first = _date_param(request, "from", None if required else billing.FIRST_DATE)
    last = _date_param(request, "to", None if required else billing.LAST_DATE)
    return first, last


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "protocol": 1})


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
    keys = app[LEDGER].signing_keys(dev, request.headers.get(P.KEY_HEADER))
    seq, sig = request.headers.get(auth.SEQ_HEADER), request.headers.get(auth.SIG_HEADER)
    if (seq is None or sig is None or not any(
            auth.verify(k, request.method, request.rel_url.raw_path, seq, body, sig)
            for k in keys)):
        return _error(401, "unknown device, or missing or bad signature")
    try:
        rep = parse_report(body, seq)
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
        raise _Fail(400, 'expected {"key": "<64 hex digits>"}')
    assert isinstance(d, dict)
    if d.get("key_id", "") is None or not isinstance(d.get("overlap_s", 0), int):
        raise _Fail(400, "key_id: a name; overlap_s: whole seconds")
    try:
        new = await request.app[WORKER].call(request.app[LEDGER].add_device, dev, key,
                                             d.get("key_id"), d.get("overlap_s", 0))
    except ValueError as e:
        raise _Fail(400, str(e)) from None
    await request.app[WORKER].call(request.app[LEDGER].audit, who, dev,
                                   "provision" if new else "re-key",
                                   f"key id {d.get('key_id')}, overlap {d.get('overlap_s', 0)} s")
    return web.json_response({"id": dev, "created": new}, status=201 if new else 200)


async def put_config(request: web.Request) -> web.Response:
    who = _admin(request, operator=True)
    d = await _json_body(request)
    if not isinstance(d, dict) or not isinstance(d.get("settings"), dict) or len(d) != 1:
        raise _Fail(400, 'expected {"settings": {...}}')
    try:
        out = await request.app[WORKER].call(request.app[LEDGER].set_config,
                                             request.match_info["id"], d["settings"])
    except UnknownDevice:
        raise _Fail(404, "unknown device") from None
    except NotForThisDevice as e:  # valid settings, but not for this device (its kinds)
        raise _Fail(409, f"the device would refuse these settings: {e}") from None
    except BadSettings as e:
        raise _Fail(400, f"the device would refuse these settings: {e}") from None
    await request.app[WORKER].call(request.app[LEDGER].audit, who, request.match_info["id"],
                                   "config",
                                   f"version {out['version']}: {json.dumps(d['settings'])}")
    return web.json_response(out)


async def put_plan(request: web.Request) -> web.Response:
    who = _admin(request, operator=True)
    d = await _json_body(request)
    try:
        out = await request.app[WORKER].call(request.app[LEDGER].set_plan,
                                             request.match_info["id"], d)
    except UnknownDevice:
        raise _Fail(404, "unknown device") from None
    except billing.BadPlan as e:
        raise _Fail(400, str(e)) from None
    except StateConflict as e:
        raise _Fail(409, str(e)) from None
    await request.app[WORKER].call(request.app[LEDGER].audit, who, request.match_info["id"],
                                   "plan", json.dumps(d))
    return web.json_response(out)


async def _query(request: web.Request, fn: Callable[..., Any], *args: Any) -> web.Response:
    _admin(request)
    out = await request.app[WORKER].call(fn, request.match_info["id"], *args)
    if out is None:
        raise _Fail(404, "unknown device")
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
        raise _Fail(400, "after and limit are integers") from None
    if not 1 <= limit <= EVENTS_MAX:
        raise _Fail(400, f"limit: 1 to {EVENTS_MAX}")
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
    try:
        out = await request.app[WORKER].call(fn, request.match_info["id"], *args)
    except UnknownDevice:
        raise _Fail(404, "unknown device") from None
    except UnknownOrder:
        raise _Fail(404, "unknown order") from None
    except StateConflict as e:
        raise _Fail(409, str(e)) from None
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
        raise _Fail(400, 'expected {"item": "<name>"}')
    return await _owner(request, request.app[LEDGER].refill, item, action="refill")


async def get_invoice(request: web.Request) -> web.Response:
    try:
        return await _query(request, request.app[LEDGER].invoice,
                            *_range(request, required=True))
    except billing.BadPlan as e:
        raise _Fail(409, str(e)) from None


BUSY_RETRY_S = 2


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


def make_app(ledger: Ledger, admin_token: str, faults: Faults | None = None,
             quota_: quota.Quota | None = None) -> web.Application:
    """The cloud's aiohttp app over `ledger` (which the caller keeps and closes), with
    per-device quotas (default: quota.Quota())."""
    if not admin_token:
        raise ValueError("an admin token is required")
    app = web.Application(client_max_size=MAX_BODY, middlewares=[busy_is_503])
    app[LEDGER] = ledger
    app[WORKER] = worker = Worker(ledger)
    app[ADMIN_TOKEN] = admin_token
    app[QUOTA] = quota_ or quota.Quota()
    app[LEVELS] = {}
    if faults is not None:
        app[FAULTS] = faults

    async def close_worker(_: web.Application) -> None:
        worker.close()

    app.on_cleanup.append(close_worker)

    async def date_header(_: web.Request, resp: web.StreamResponse) -> None:
        # The Date devices cross-check their clock against: the ledger's clock (the
        # harness runs it virtual), not the host's.
        resp.headers["Date"] = formatdate(ledger.now(), usegmt=True)

    app.on_response_prepare.append(date_header)
    r = app.router
    r.add_get(P.HEALTH_PATH, health)
    r.add_post(P.REPORT_PATH % "{id}", report)
    r.add_get("/v1/devices/{id}", get_device)
    r.add_get("/v1/devices/{id}/days", get_days)
    r.add_get("/v1/devices/{id}/events", get_events)
    r.add_get("/v1/devices/{id}/invoice", get_invoice)
    r.add_get("/v1/devices/{id}/orders", get_orders)
    r.add_put("/v1/admin/devices/{id}", provision)
    r.add_put("/v1/admin/devices/{id}/config", put_config)
    r.add_put("/v1/admin/devices/{id}/plan", put_plan)
    r.add_post("/v1/admin/devices/{id}/orders/{order}/approve", approve_order)
    r.add_post("/v1/admin/devices/{id}/orders/{order}/decline", decline_order)
    r.add_post("/v1/admin/devices/{id}/refill", post_refill)
    roles.add_routes(app)
    _console_routes(app, worker.call)
    return app


class CloudServer:
    """The cloud on host:port (port 0: any free one), over TLS when `ssl_context` is given.

        async with CloudServer(tmp_path / "ledger.db", devices=[(dev, key)]) as cloud:
            ... cloud.url, cloud.admin_headers, cloud.ledger, await cloud.restart()

    `db` is a path, ":memory:", or a Ledger the caller owns (which then has its own clock and
    merchant: `merchant` is for a ledger made here)."""

    def __init__(self, db: str | Path | Ledger = ":memory:", *, host: str = "127.0.0.1",
                 port: int = 0, admin_token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, faults: Faults | None = None,
                 devices: Iterable[tuple[str, str]] = (), synchronous: str = "FULL",
                 merchant: Merchant | None = None, quota: quota.Quota | None = None) -> None:
        self._owns_ledger = not isinstance(db, Ledger)
        if isinstance(db, Ledger):
            if merchant is not None:
                raise ValueError("give the merchant to the Ledger: Ledger(..., merchant=...)")
            self.ledger = db
        else:
            self.ledger = Ledger(db, synchronous=synchronous, merchant=merchant)
        for dev, key in devices:
            self.ledger.add_device(dev, key)
        self.admin_token = admin_token or secrets.token_urlsafe(18)
        self.faults = faults
        self.host, self.port, self.ssl_context = host, port, ssl_context
        self.app = make_app(self.ledger, self.admin_token, faults, quota)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def start(self) -> CloudServer:
        # shutdown_timeout: a stop waits this long for requests in flight (a delay fault).
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._owns_ledger:
            self.ledger.close()

    async def restart(self) -> None:
        """Close and reopen the ledger, between two requests (needs a file database)."""
        await self.app[WORKER].restart()

    async def __aenter__(self) -> CloudServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextmanager
def cloud_thread(db: str | Path | Ledger = ":memory:", **kwargs: Any) -> Iterator[CloudServer]:
    """CloudServer on an event loop of its own, in a background thread: for synchronous code
    (an emulated device talking to it). Arguments as CloudServer's."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cloud", daemon=True)
    thread.start()
    cloud = CloudServer(db, **kwargs)
    try:
        asyncio.run_coroutine_threadsafe(cloud.start(), loop).result(30)
        yield cloud
    finally:
        asyncio.run_coroutine_threadsafe(cloud.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _serve(cloud: CloudServer, out: TextIO, token_given: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with cloud:
        print(f"brewmeter cloud listening on {cloud.url} (ledger {cloud.ledger.path})",
              file=out, flush=True)
        if not token_given:
            print(f"admin token: {cloud.admin_token}", file=out, flush=True)
        await stop.wait()


def run_cloud(host: str = "127.0.0.1", port: int = 8080, db: str | Path = ":memory:",
              ssl_context: ssl.SSLContext | None = None, *, admin_token: str | None = None,
              devices: Iterable[tuple[str, str]] = (), faults: Faults | None = None,
              synchronous: str = "FULL", merchant: Merchant | None = None,
              out: TextIO = sys.stdout) -> int:
    """Serve until SIGINT or SIGTERM; print the URL first (and the admin token if it was
    generated). Returns 0."""
    cloud = CloudServer(db, host=host, port=port, admin_token=admin_token,
                        ssl_context=ssl_context, faults=faults, devices=devices,
                        synchronous=synchronous, merchant=merchant)
    asyncio.run(_serve(cloud, out, admin_token is not None))
    return 0


def server_ssl_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def parse_device(s: str) -> tuple[str, str]:
    """ "ID:KEYHEX" -> (id, keyhex), checked."""
    dev, sep, key = s.partition(":")
    if not sep:
        raise ValueError(f"expected ID:KEYHEX, got {s!r}")
    auth.check_device_id(dev)
    auth.parse_key(key)
    return dev, key


def run_args(args: argparse.Namespace) -> int:
    """Run from arguments made by brewmeter.cloud.add_arguments."""
    try:
        devices = [parse_device(s) for s in args.device or ()]
        faults = Faults(seed=args.fault_seed, rates=dict(args.fault or ()))
        ctx = None
        if args.tls_cert or args.tls_key:
            if not (args.tls_cert and args.tls_key):
                raise ValueError("--tls-cert and --tls-key go together")
            ctx = server_ssl_context(args.tls_cert, args.tls_key)
    except (ValueError, OSError) as e:
        print(f"brewmeter cloud: {e}", file=sys.stderr)
        return 2
    merchant = Merchant(args.ship_after_s, args.deliver_after_s,
                        frozenset(args.out_of_stock or ()))
    return run_cloud(args.host, args.port, args.db, ctx, admin_token=args.admin_token,
                     devices=devices, faults=faults if faults.rates else None,
                     synchronous=args.synchronous, merchant=merchant)


def cloud_main(argv: list[str] | None = None) -> int:
    """`brewmeter cloud [--port P] [--host H] [--db PATH] [--tls-cert F --tls-key F]
    [--admin-token T] [--device ID:KEYHEX ...]`."""
    from brewmeter.cloud import add_arguments

    ap = argparse.ArgumentParser(prog="brewmeter cloud",
                                 description="Run the emulated brewmeter cloud.")
    add_arguments(ap)
    return run_args(ap.parse_args(argv))
