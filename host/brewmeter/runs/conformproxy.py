"""`brewmeter conform`'s network side (conform.py runs the lives): the seeded fault proxy
between the device and the backend under test, the Report schema it checks every report
against, the backend's admin and query API, and the rules a verdict names and the verdict."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import yaml

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.yaml"
DEVICE_TIMEOUT_MS = 1500  # the device's reply timeout here (the protocol's is 10 s)
FAULTS = ("drop", "drop_after", "delay", "truncate", "garbage", "duplicate", "replay",
          "reorder")

# The rules each check stands for (docs/protocol.yaml's sections), as the verdict names them.
RULES = {
    "report_schema": "every report the device sends is a valid Report (the document)",
    "reply_shape": "a reply the device can read: Content-Length, at most 32 header lines "
                   "of 512 bytes, a body of at most 4096 bytes, within 10 s (Replies)",
    "reply_body": "a 200's body: ack list, config null or with an integer version; a 409's "
                  "seq at most 2^52-1 (Replies, Sequence numbers)",
    "refusals": "no report is refused again and again (Replies: refusals)",
    "counters": "counters merge per field by maximum, partial reports included "
                "(Sync model: partial counters)",
    "days": "every brew on its day, or estimated on one (Undated buckets, folded buckets)",
    "invoice": "the invoice is the brews times the price (Billing)",
    "events": "every event stored once (Events)",
    "orders": "at most one order per item and cycle (Supplies and replenishment orders)",
    "config": "the desired config reaches the device, versions only forward "
              "(Desired configuration: versions)",
    "config_checked": "desired settings the device would reject are refused with 400 "
                      "(Desired settings)",
    "refill": "a refill the owner says in the backend reaches the device (reply's refill)",
    "admin": "the admin and query API answer as documented",
    "update_offer": "a report's reply offers the release rolled out to the device (its "
                    "manifest and signature as uploaded, the image's url), and not while the "
                    "report carries an update status (docs/updates.md: The offer)",
    "update_download": "a range of the image is its bytes: 206 with Content-Range, END past "
                       "the end clipped, 416 from its size, 400 over 65536 bytes, 404 for a "
                       "release not offered, a bad signature refused (The ranged download)",
    "update_status": "a report's update status is accepted and the rollout's progress shows "
                     "it (The status in a report)",
}


@dataclass
class Violation:
    rule: str
    life: str
    detail: str


@dataclass
class Verdict:
    ok: bool
    seed: int
    url: str
    lives: list[dict[str, Any]]  # name, device id, brews, syncs tried, orders it holds
    reports: int
    faults: dict[str, int]
    broken: list[str]  # the rules broken, each once
    violations: list[dict[str, str]] = field(default_factory=list)


def report_validator() -> Any:
    doc = yaml.safe_load(DOC.read_text())
    return jsonschema_rs.Draft202012Validator(
        {"$ref": "#/components/schemas/Report", "components": doc["components"]})


class Proxy:
    """The seeded fault proxy between the device and the backend (see the module's text)."""

    def __init__(self, upstream: str, ssl: Any, seed: int, rate: float,
                 note: Any) -> None:
        self.upstream = upstream
        self.ssl = ssl
        self.rng = random.Random(seed)
        self.rate = rate  # the share of exchanges spoilt
        self.note = note  # note(rule, detail): a broken rule
        self.validator = report_validator()
        self.shift_s = 0  # added to the reply's Date: the life's time minus the real time
        self.spoilt = False  # the last exchange was spoilt on purpose
        self.log: Counter[str] = Counter()
        self.reports = 0
        self._held: list[tuple[str, dict[str, str], bytes]] = []  # reordered, or to replay
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def draw(self) -> str | None:
        return self.rng.choice(FAULTS) if self.rng.random() < self.rate else None

    async def _forward(self, path: str, head: dict[str, str], body: bytes
                       ) -> tuple[int, int, bytes, bytes] | None:
        """The backend's reply, read by the device's own client; None if it could not be."""
        from app import http, protocol

        try:
            date = [b""]
            status, retry, reply = await http.post(self.upstream, path, head, body,
                                                   protocol.REPLY_MS, self.ssl,
                                                   protocol.MAX_REPLY, date)
        except http.HttpError as e:
            self.note("reply_shape", f"{path}: {e}")
            return None
        except OSError as e:
            self.note("reply_shape", f"{path}: no connection ({e})")
            return None
        return status, retry, reply, date[0]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._exchange(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError,
                asyncio.CancelledError):  # the device gave up, or the proxy is closing
            pass
        finally:
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        from app import protocol, wallclock

        request = await reader.readuntil(b"\r\n\r\n")
        lines = request.decode().split("\r\n")
        path = lines[0].split(" ")[1]
        head = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            head[k.strip()] = v.strip()
        body = await reader.readexactly(int(head.get("Content-Length", "0")))
        fwd = {k: v for k, v in head.items()
               if k in (protocol.SEQ_HEADER, protocol.SIG_HEADER, protocol.KEY_HEADER)}
        self.reports += 1
        self._check(body)
        fault = self.draw()
        self.spoilt = fault is not None
        if fault:
            self.log[fault] += 1
        if fault == "drop":
            return
        if fault == "reorder":  # held back: it goes after the next one
            self._held.append((path, fwd, body))
            return
        if fault == "duplicate":
            got, _ = await asyncio.gather(self._forward(path, fwd, body),
                                          self._forward(path, fwd, body))
        else:
            got = await self._forward(path, fwd, body)
        held, self._held = self._held, []
        for h in held:  # the reordered ones, and the replays, after this one
            await self._forward(*h)
        if fault == "replay":
            self._held.append((path, fwd, body))
        if got is None:  # the backend's reply could not be read: the device hears a 502
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        if fault == "drop_after":
            return
        if fault == "garbage":
            writer.write(bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 300))))
            return
        status, retry, reply, when = got
        out = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n" % (status, len(reply))
        if retry:
            out += b"Retry-After: %d\r\n" % retry
        t = wallclock.http_date(when)
        if t:
            out += b"Date: %s\r\n" % formatdate(t + self.shift_s, usegmt=True).encode()
        out += b"\r\n" + reply
        if fault == "delay":
            await asyncio.sleep(DEVICE_TIMEOUT_MS / 1000 + 0.3)
        if fault == "truncate":
            out = out[:len(out) - max(1, len(reply) // 2)]
        writer.write(out)
        await writer.drain()

    def _check(self, body: bytes) -> None:
        try:
            report = json.loads(body)
        except ValueError:
            self.note("report_schema", "a report is not JSON")
            return
        for e in self.validator.iter_errors(report):
            self.note("report_schema", f"seq {report.get('seq')}: {e.message}"[:300])
            break


class Admin:
    """The backend's admin and query API (docs/protocol.yaml)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str, ssl: Any) -> None:
        self.s, self.url, self.ssl = session, url.rstrip("/"), ssl
        self.head = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None,
                   **params: str) -> tuple[int, Any]:
        async with self.s.request(method, self.url + path, json=body, params=params,
                                  headers=self.head, ssl=self.ssl) as r:
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, None
