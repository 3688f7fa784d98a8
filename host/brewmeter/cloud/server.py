"""The emulated cloud over HTTP(S): the aiohttp app for protocol v1 (docs/protocol.yaml),
fault injection for chaos tests, and ways to run it: `CloudServer` (async context manager),
`cloud_thread` (for synchronous code), `run_cloud` / `cloud_main` (the `brewmeter cloud`
command, until SIGINT/SIGTERM)."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import ssl
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from aiohttp import web

from brewmeter import secretargs
from brewmeter.cloud import quota, releases_api, roles
from brewmeter.cloud.api import (  # noqa: F401 - re-exported
    BUSY_RETRY_S,
    EVENTS_MAX,
    FAULTS,
    LEVELS,
    QUOTA,
    WORKER,
    _admin,
    _date_param,
    _drop,
    _error,
    _json_body,
    _owner,
    _query,
    _range,
    answers,
    approve_order,
    busy_is_503,
    decline_order,
    get_days,
    get_device,
    get_events,
    get_invoice,
    get_orders,
    health,
    post_refill,
    provision,
    put_config,
    put_plan,
    reply_headers,
    report,
)
from brewmeter.cloud.db import is_url, shown
from brewmeter.cloud.faults import FAULT_KINDS, Faults  # noqa: F401 - re-exported
from brewmeter.cloud.ledger import Ledger
from brewmeter.cloud.merchant import Merchant
from brewmeter.cloud.options import add_arguments
from brewmeter.cloud.report import MAX_BODY
from brewmeter.cloud.roles import ADMIN_TOKEN, LEDGER
from brewmeter.cloud.shared import protocol as P
from brewmeter.cloud.web import add_routes as _console_routes
from brewmeter.cloud.worker import Worker  # noqa: F401 - re-exported
from brewmeter.private import write_new


def make_app(ledger: Ledger, admin_token: str, faults: Faults | None = None,
             quota_: quota.Quota | None = None) -> web.Application:
    """The cloud's aiohttp app over `ledger` (which the caller keeps and closes), with
    per-device quotas (default: quota.Quota())."""
    if not admin_token:
        raise ValueError("an admin token is required")
    app = web.Application(client_max_size=MAX_BODY, middlewares=[busy_is_503, answers])
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

    app.on_response_prepare.append(reply_headers(ledger.now))
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
    app[roles.CALL] = worker.call
    for add_routes in (roles.add_routes, releases_api.add_routes, _console_routes):
        add_routes(app)
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
                 devices: Iterable[tuple[str, ...]] = (), synchronous: str = "FULL",
                 merchant: Merchant | None = None, quota: quota.Quota | None = None,
                 reuse_port: bool = False) -> None:
        self._owns_ledger = not isinstance(db, Ledger)
        if isinstance(db, Ledger):
            if merchant is not None:
                raise ValueError("give the merchant to the Ledger: Ledger(..., merchant=...)")
            self.ledger = db
        else:
            self.ledger = Ledger(db, synchronous=synchronous, merchant=merchant)
        for dev, key, *key_id in devices:
            self.ledger.add_device(dev, key, *key_id)
        self.admin_token = admin_token or secrets.token_urlsafe(18)
        self.faults = faults
        self.host, self.port, self.ssl_context = host, port, ssl_context
        self.reuse_port = reuse_port  # beside other processes on the port (--workers)
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
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context,
                           reuse_port=self.reuse_port or None)
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


async def _serve(cloud: CloudServer, out: TextIO, token_note: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with cloud:
        print(f"brewmeter cloud listening on {cloud.url} (ledger {cloud.ledger.path})",
              file=out, flush=True)
        if token_note:
            print(token_note, file=out, flush=True)
        print(f"web console: {cloud.url}/console/ (sign in with the operator's (admin) token "
              "or an owner's)", file=out, flush=True)
        await stop.wait()


def run_cloud(host: str = "127.0.0.1", port: int = 8080, db: str | Path | Ledger = ":memory:",
              ssl_context: ssl.SSLContext | None = None, *, admin_token: str | None = None,
              devices: Iterable[tuple[str, ...]] = (), faults: Faults | None = None,
              synchronous: str = "FULL", merchant: Merchant | None = None,
              out: TextIO = sys.stdout, token_note: str | None = None) -> int:
    """Serve until SIGINT or SIGTERM; print the URL first, then `token_note`. Without an
    `admin_token` a new one is made, written to a file of its own (its path printed, never
    the token: terminals and logs keep what is printed) and removed at the end. Returns 0."""
    with tempfile.TemporaryDirectory(prefix="brewmeter-cloud-") as d:  # yours alone (0700)
        if admin_token is None:
            admin_token, token_note = new_token(Path(d))
        cloud = CloudServer(db, host=host, port=port, admin_token=admin_token,
                            ssl_context=ssl_context, faults=faults, devices=devices,
                            synchronous=synchronous, merchant=merchant)
        asyncio.run(_serve(cloud, out, token_note))
    return 0


def _serve_workers(args: argparse.Namespace, token: str | None, note: str | None,
                   faults: Faults | None, merchant: Merchant, tls: bool) -> int:
    from brewmeter.cloud import processes

    with tempfile.TemporaryDirectory(prefix="brewmeter-cloud-") as d:  # yours alone (0700)
        if token is None:
            token, note = new_token(Path(d))

        def banner(port: int) -> str:
            url = f"{'https' if tls else 'http'}://{args.host}:{port}"
            return (f"brewmeter cloud listening on {url} (ledger {shown(args.db)}, "
                    f"{args.workers} workers)" + (f"\n{note}" if note else ""))

        return processes.serve(args.workers, args.host, args.port, serve_worker,
                               (args.db, (args.tls_cert, args.tls_key) if tls else None,
                                token, faults, merchant), banner)


def serve_worker(host: str, port: int, db: str, tls: tuple[str, str] | None, token: str,
                 faults: Faults | None, merchant: Merchant, ready: Any) -> None:
    """One of --workers: the cloud on host:port beside the others, until SIGTERM; True
    on `ready` once it listens."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (Ctrl-C reaches all)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        ctx = server_ssl_context(*tls) if tls else None
        async with CloudServer(db, host=host, port=port, admin_token=token, ssl_context=ctx,
                               faults=faults, merchant=merchant, reuse_port=True):
            ready.send(True)
            await stop.wait()

    asyncio.run(main())


def new_token(folder: Path) -> tuple[str, str]:
    """(a new operator's token, what to print about it): written to a file of its own in
    `folder` (yours alone), never printed: terminals and logs keep what is printed."""
    token = secrets.token_urlsafe(18)
    write_new(folder / "admin.token", token + "\n")
    return token, (f"admin token: in {folder / 'admin.token'} (readable by you alone; "
                   "removed when the cloud stops)")


def server_ssl_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def read_device(path: str) -> tuple[str, ...]:
    """(device_id, key[, key_id]) of provisioning file `path`, checked as flash.sh checks it
    (its errors name the file and the field, never the key)."""
    from brewmeter.flashfiles import FlashError, load_provision

    try:
        p = load_provision(path)
    except FlashError as e:
        raise ValueError(f"--device-file {e}") from None
    return (p["device_id"], p["key"], *([p["key_id"]] if "key_id" in p else []))


def admin_token(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(the operator's token, what to print about it) from --admin-token-file (made with a
    new token when the file does not exist) or $BREWMETER_ADMIN_TOKEN; (None, None): neither,
    run_cloud makes one."""
    path = args.admin_token_file
    if path and not os.path.lexists(path):
        token = secrets.token_urlsafe(18)
        try:
            write_new(Path(path), token + "\n")
        except OSError as e:
            raise ValueError(f"--admin-token-file {path}: cannot write: {e.strerror}") from None
        return token, f"admin token: new, written to {path} (readable by you alone)"
    try:
        return secretargs.get(args, secretargs.ADMIN_TOKEN, ask=False), None
    except secretargs.SecretError as e:
        raise ValueError(str(e)) from None


def run_args(args: argparse.Namespace) -> int:
    """Run from arguments made by brewmeter.cloud.options.add_arguments."""
    if is_url(args.db) and urlsplit(args.db).password is not None:
        print("brewmeter cloud: --db: a password in the URL shows in ps and the shell's "
              "history: give it in ~/.pgpass or $PGPASSWORD", file=sys.stderr)
        return 2
    if args.action:
        return _backup_or_restore(args)
    try:
        token, note = admin_token(args)
        devices = [read_device(s) for s in args.device_file or ()]
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
    if args.workers != 1:
        from brewmeter.cloud import processes

        try:
            processes.check_workers(args.workers, args.db)
        except ValueError as e:
            print(f"brewmeter cloud: {e}", file=sys.stderr)
            return 2
    try:
        ledger = Ledger(args.db, synchronous=args.synchronous, merchant=merchant)
    except Exception as e:  # no server, no such database, a newer schema: a line, no trace
        print(f"brewmeter cloud: the ledger {shown(args.db)}: {str(e).strip()}",
              file=sys.stderr)
        return 2
    try:
        if args.workers != 1:
            for dev, key, *key_id in devices:  # (once, before the workers start)
                ledger.add_device(dev, key, *key_id)
            return _serve_workers(args, token, note, faults if faults.rates else None,
                                  merchant, ctx is not None)
        return run_cloud(args.host, args.port, ledger, ctx, admin_token=token,
                         devices=devices, faults=faults if faults.rates else None,
                         token_note=note)
    finally:
        ledger.close()


def _backup_or_restore(args: argparse.Namespace) -> int:
    import sqlite3

    from brewmeter.cloud import backup

    try:
        if not args.path:
            raise backup.BackupError(f"{args.action} needs a PATH")
        if args.action == "backup":
            n = backup.backup(args.db, args.path)
            print(f"{shown(args.db)} -> {args.path}: {n} devices")
        else:
            n = backup.restore(args.path, args.db)
            print(f"{args.path} -> {shown(args.db)}: {n} devices (the ledger it replaced: "
                  f"{backup.replaced(args.path, args.db)})")
    except (backup.BackupError, OSError, sqlite3.Error) as e:
        print(f"brewmeter cloud {args.action}: {e}", file=sys.stderr)
        return 2
    return 0


def cloud_main(argv: list[str] | None = None) -> int:
    """`brewmeter cloud [--port P] [--host H] [--db PATH] [--tls-cert F --tls-key F]
    [--admin-token-file F] [--device-file PROVISION.json ...]`."""
    ap = argparse.ArgumentParser(prog="brewmeter cloud", allow_abbrev=False,
                                 description="Run the emulated brewmeter cloud.")
    add_arguments(ap)
    secretargs.mask_values(ap)
    return run_args(ap.parse_args(argv))
