"""`brewmeter conform` against the reference cloud (it must pass), and against backends
each broken in one way the protocol forbids (it must fail, naming that rule)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from brewmeter import cli
from brewmeter.cloud import CloudServer, Ledger
from brewmeter.cloud.merge import Merge
from brewmeter.runs.conform import Conform


async def _conform(url: str, token: str, seed: int = 5, rate: float = 0.2) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(await Conform(url, token, None, seed, rate, patience_s=2).main())


BROKEN_RATE = 0.05  # a broken backend fails with few faults too: fewer held replies


@pytest.mark.slow
async def test_the_reference_cloud_conforms(memory_at):
    async with CloudServer(memory_at) as cloud:
        v = await _conform(cloud.url, cloud.admin_token)
    assert v["violations"] == [] and v["broken"] == [] and v["ok"]
    assert v["seed"] == 5 and sum(v["faults"].values()) > 10  # the proxy spoilt some
    lives = {life["name"]: life for life in v["lives"]}
    assert set(lives) == {"daily", "offline70", "ntp_blocked", "flash_replaced", "orders"}
    assert all(life["brews"] > 0 for life in lives.values())
    assert lives["orders"]["orders"] >= 2  # ordered, approved, refilled, ordered again


@pytest.mark.slow
def test_the_command_over_tls(tmp_path, capsys, monkeypatch):
    """`brewmeter conform --url https://... --ca PEM --json`: one JSON object, exit 0."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "token").write_text("tok\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "brewmeter.cloud", "--port", "0", "--db", ":memory:",
         "--admin-token-file", str(tmp_path / "token"), "--tls-cert", str(tmp_path / "cert.pem"),
         "--tls-key", str(tmp_path / "cert.pem")], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"https://127\.0\.0\.1:\d+", line)
        assert m, line
        code = cli.main(["conform", "--url", m.group(0), "--admin-token-file",
                         str(tmp_path / "token"),
                         "--ca", str(tmp_path / "ca.pem"), "--seed", "9", "--json"])
        out = capsys.readouterr().out.strip()
        v = json.loads(out)
        assert code == 0 and v["ok"] and v["seed"] == 9, v["violations"]
        monkeypatch.setenv("BREWMETER_ADMIN_TOKEN", "wr0ng-t0ken")
        assert cli.main(["conform", "--url", m.group(0), "--ca", str(tmp_path / "ca.pem"),
                         "--seed", "9"]) == 1
        out, err = capsys.readouterr()
        assert "admin" in out and "wr0ng-t0ken" not in out + err
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
async def test_a_backend_out_of_stock_conforms():
    """Declined orders (out of stock) end ordering for the cycle: nothing to break."""
    from brewmeter.cloud import Merchant

    ledger = Ledger(":memory:", merchant=Merchant(out_of_stock={"coffee"}))
    async with CloudServer(ledger) as cloud:
        v = await _conform(cloud.url, cloud.admin_token, seed=6)
        orders = [o for life in v["lives"] for o in cloud.ledger.orders(life["id"]) or []]
    ledger.close()
    assert v["ok"], v["violations"]
    assert {o["status"] for o in orders if o["item"] == "coffee"} == {"declined"}


# -- broken backends ---------------------------------------------------------------------------

class Snapshot(Merge):
    """Keeps the newest report's counters as they are: fields it does not carry are gone."""

    def _counters(self, db, dev, r, newest, now):  # noqa: ANN001
        if newest:
            db.execute("DELETE FROM counters WHERE device=?", (dev,))
            db.executemany("INSERT INTO counters (device, field, value) VALUES (?, ?, ?)",
                           [(dev, f, v) for f, v in r.counters.items()])


class Downgrade(Merge):
    """Restored from a backup: once a device runs config v2, it is sent v1 again as if
    new, without saying it was restored."""

    def _reply(self, db, dev, r, now, last_seq, dv, ds, applied, rejected,  # noqa: ANN001
               duplicate=False):
        out = super()._reply(db, dev, r, now, last_seq, dv, ds, applied, rejected, duplicate)
        if applied is not None and applied >= 2:
            out = replace(out, config={"version": 1, "settings": {"lead_days": 3}})
        return out


class NoRefill(Merge):
    """Takes the owner's refills but never tells the device."""

    def _reply(self, *args, **kw):  # noqa: ANN002, ANN003
        return replace(super()._reply(*args, **kw), refill={})


async def _front(upstream: str, change: Callable[[bytes, bytes], bytes | None],
                 strip: bytes = b""):
    """A proxy in front of the reference: change(request, reply) may rewrite the reply
    (bytes), or answer in its place without asking the reference (request -> reply);
    `strip`: a path prefix it serves under and takes off (a gateway)."""
    host, port = upstream.removeprefix("http://").split(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            n = re.search(rb"(?i)content-length: *(\d+)", head)
            req = head + (await reader.readexactly(int(n.group(1))) if n else b"")
            if strip:
                req = req.replace(b" " + strip + b"/", b" /", 1)
            r, w = await asyncio.open_connection(host, int(port))
            w.write(req)
            await w.drain()
            reply = await r.read()
            w.close()
            writer.write(change(req, reply) or reply)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _is_report(req: bytes) -> bool:
    return req.startswith(b"POST /v1/devices/")


def unchanged(req: bytes, reply: bytes) -> bytes | None:
    return None


def strict(req: bytes, reply: bytes) -> bytes | None:
    # A validator stricter than the document: every report must name its firmware.
    if _is_report(req) and b'"fw":' not in req:
        body = b'{"error":"fw is required"}'
        return b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    return None


def cdn_header(req: bytes, reply: bytes) -> bytes | None:
    # A CDN in front adds a long header line (over the device's 512 bytes).
    head, _, body = reply.partition(b"\r\n\r\n")
    return head + b"\r\nX-Cdn-Trace: " + b"x" * 600 + b"\r\n\r\n" + body


def chunked(req: bytes, reply: bytes) -> bytes | None:
    # Replies sent chunked, without Content-Length.
    if not _is_report(req):
        return None
    head, _, body = reply.partition(b"\r\n\r\n")
    head = re.sub(rb"(?i)\r\ncontent-length: *\d+", b"\r\nTransfer-Encoding: chunked", head)
    return head + b"\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize(("broken", "rule"), [
    pytest.param(strict, "refusals", marks=pytest.mark.slow),
    pytest.param(cdn_header, "reply_shape", marks=pytest.mark.slow),
    pytest.param(chunked, "reply_shape", marks=pytest.mark.slow),
    (Downgrade, "config"), pytest.param(Snapshot, "counters", marks=pytest.mark.slow),
    (NoRefill, "refill")])
async def test_a_broken_backend_fails_naming_the_rule(broken, rule):
    if isinstance(broken, type):
        ledger = Ledger(":memory:", merge=broken)
        async with CloudServer(ledger) as cloud:
            v = await _conform(cloud.url, cloud.admin_token, rate=BROKEN_RATE)
        ledger.close()
    else:
        async with CloudServer(":memory:") as cloud:
            server, url = await _front(cloud.url, broken)
            async with server:
                v = await _conform(url, cloud.admin_token, rate=BROKEN_RATE)
    assert not v["ok"] and rule in v["broken"], v["broken"]
    named = [x for x in v["violations"] if x["rule"] == rule]
    assert named and named[0]["says"] and named[0]["detail"]


@pytest.mark.slow
async def test_a_gateway_that_strips_the_base_path_fails_the_signature():
    """The device signs the path it sends (with its cloud_url's base path): a gateway that
    takes the prefix off before the backend verifies fails every signature."""
    async with CloudServer(":memory:") as cloud:
        server, url = await _front(cloud.url, unchanged, strip=b"/brew")
        async with server:
            v = await _conform(url + "/brew", cloud.admin_token, rate=BROKEN_RATE)
    assert not v["ok"] and "refusals" in v["broken"]
    assert any("401" in x["detail"] for x in v["violations"] if x["rule"] == "refusals")


# -- the update endpoints (runs/conformupdates.py) -----------------------------------------

async def _updates(url: str, token: str) -> list[tuple[str, str]]:
    """The update check alone against the backend at `url`: its (rule, detail) notes."""
    import aiohttp
    from brewmeter.runs.conformproxy import Admin
    from brewmeter.runs.conformupdates import UpdateCheck

    notes: list[tuple[str, str]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        await UpdateCheck(s, url, None, Admin(s, url, token, None), "t",
                          lambda rule, detail, life: notes.append((rule, detail))).run()
    return notes


async def test_the_reference_clouds_update_endpoints_conform(memory_at):
    async with CloudServer(memory_at) as cloud:
        assert await _updates(cloud.url, cloud.admin_token) == []


class NoOffer(Merge):
    """Records statuses, never offers."""

    def _reply(self, *args, **kw):  # noqa: ANN002, ANN003
        return replace(super()._reply(*args, **kw), update=None)


class OffersAlways(Merge):
    """Offers on every reply, an update in hand or not."""

    def _reply(self, db, dev, r, *args, **kw):  # noqa: ANN001, ANN002, ANN003
        out = super()._reply(db, dev, r, *args, **kw)
        return replace(out, update=self.releasing.update_offer(db, dev) or out.update)


class NoStatus(Merge):
    """Takes a report's update status and keeps nothing of it."""

    def __init__(self, *args, **kw) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kw)
        self.releasing.record_status = lambda *_: None  # type: ignore[method-assign]


def flipped(req: bytes, reply: bytes) -> bytes | None:
    # A cache in front of the download that corrupts a byte of each range.
    if req.startswith(b"GET ") and b"/image " in req.split(b"\r\n", 1)[0]:
        return reply[:-1] + bytes([reply[-1] ^ 1])
    return None


def whole(req: bytes, reply: bytes) -> bytes | None:
    # A download that ignores Range: 200 and the whole image.
    if req.startswith(b"GET ") and b"/image " in req.split(b"\r\n", 1)[0] and \
            reply.startswith(b"HTTP/1.1 206"):
        return b"HTTP/1.1 200 OK" + reply[len(b"HTTP/1.1 206 Partial Content"):]
    return None


@pytest.mark.parametrize(("broken", "rule"), [
    (NoOffer, "update_offer"), (OffersAlways, "update_offer"), (NoStatus, "update_status"),
    (flipped, "update_download"), (whole, "update_download")])
async def test_a_backend_broken_in_its_update_endpoints_fails_naming_the_rule(broken, rule):
    if isinstance(broken, type):
        ledger = Ledger(":memory:", merge=broken)
        async with CloudServer(ledger) as cloud:
            notes = await _updates(cloud.url, cloud.admin_token)
        ledger.close()
    else:
        async with CloudServer(":memory:") as cloud:
            server, url = await _front(cloud.url, broken)
            async with server:
                notes = await _updates(url, cloud.admin_token)
    assert rule in {r for r, _ in notes}, notes
