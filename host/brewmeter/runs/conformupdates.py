"""`brewmeter conform`'s check of a backend's update endpoints (docs/updates.md, "The
protocol"): a device of its own is provisioned, a release is uploaded (a manifest as
`brewmeter release build` writes one, over random bytes; a signature of 256 random bytes:
a backend checks its length alone) and rolled out to it, and another is uploaded and
offered to no one. Then, signed as the device signs: a report's reply must offer the first
(the manifest and signature as uploaded, the image's url), its ranges must be the image's
bytes (206 and Content-Range; END past the end clipped; 416 from the size; 400 over 65,536
bytes; 404 for the other release; a bad signature refused), a report carrying the update's
status must be accepted without an offer, and the rollout's progress must show the status.

Requests go straight to the backend (not through the fault proxy): what is checked is the
answers, each read whole; a reply to a report must still fit the device's limits."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from brewmeter.cloud import auth
from brewmeter.cloud.offers import IMAGE_PATH, MAX_RANGE
from brewmeter.cloud.shared import protocol as P
from brewmeter.runs.conformproxy import Admin

SIZE = MAX_RANGE + 4464  # two ranges, the second short
VERSION = "999.0.0"  # newer than any device's


def release_body(image: bytes) -> dict[str, str]:
    """An upload (PUT /v1/admin/releases/{id}) of `image`: its manifest, a signature of 256
    random bytes, the image, as the document's ReleaseUpload."""
    from brewmeter import release

    return {"manifest": release.manifest(image, ["emulator"], version=VERSION, mpy=6).decode(),
            "signature": base64.b64encode(os.urandom(256)).decode(),
            "image": base64.b64encode(image).decode()}


class UpdateCheck:
    """One run of the check against the backend at `url` (see the module's text); broken
    rules go to `note(rule, detail, life)`."""

    def __init__(self, session: aiohttp.ClientSession, url: str, ssl: Any, admin: Admin,
                 tag: str, note: Callable[[str, str, str], None]) -> None:
        self.s, self.url, self.ssl, self.admin = session, url.rstrip("/"), ssl, admin
        self.base = urlsplit(self.url).path  # the device signs the path it sends
        self.dev, self.key = f"cf-{tag}-update", secrets.token_hex(32)
        self.rel, self.other, self.ro = f"cf-{tag}", f"cf-{tag}-x", f"cf-{tag}"
        self.image = os.urandom(SIZE)
        self.upload = release_body(self.image)
        self._note = note
        self.seq = P.seq(1, 0)

    def note(self, rule: str, detail: str) -> None:
        self._note(rule, detail, "updates")

    async def report(self, update: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """A signed report (carrying `update`): the reply's JSON, or None (noted) if it is
        not a 200 the device reads."""
        self.seq += 1
        rep: dict[str, Any] = {"seq": self.seq, "boot": 1, "uptime_ms": self.seq % 1000,
                               "clock": 0, "counters": {"brews_total": 0}}
        if update is not None:
            rep["update"] = update
        _, body, headers = auth.signed_report(self.dev, self.key, rep)
        path = P.REPORT_PATH % self.dev
        headers[auth.SIG_HEADER] = auth.sign(bytes.fromhex(self.key), "POST", self.base + path,
                                             self.seq, body)
        async with self.s.post(self.url + path, data=body, headers=headers,
                               ssl=self.ssl) as r:
            data = await r.read()
            lines = [len(k) + len(v) + 4 for k, v in r.raw_headers]
        rule = "update_status" if update else "update_offer"
        if r.status != 200:
            self.note(rule, f"a report{' with an update status' if update else ''} answered "
                      f"{r.status}: {data[:100]!r}")
            return None
        if len(data) > P.MAX_REPLY or len(lines) >= P.MAX_HEADERS or max(lines) > P.MAX_LINE:
            self.note("update_offer", f"a reply over the device's limits: {len(data)} bytes, "
                      f"{len(lines)} headers, the longest {max(lines)} bytes")
        try:
            out = json.loads(data)
        except ValueError:
            self.note(rule, f"a report's reply is not JSON: {data[:100]!r}")
            return None
        return out if isinstance(out, dict) else None

    async def get(self, path: str, start: int, end: int, key: str | None = None,
                  rng: str | None = None) -> tuple[int, bytes, str | None]:
        """A range of the image at `path`, signed with `key` (the device's) over the range
        (or sent with `rng` in its place): (status, body, Content-Range)."""
        h = auth.signed_range(key or self.key, self.base + path, self.seq, start, end)
        if rng is not None:
            h["Range"] = rng
        async with self.s.get(self.url + path, headers=h, ssl=self.ssl) as r:
            return r.status, await r.read(), r.headers.get("Content-Range")

    async def setup(self) -> bool:
        a, rel = self.admin, self.rel
        steps = ((f"/v1/admin/devices/{self.dev}", {"key": self.key}, "admin"),
                 (f"/v1/admin/releases/{rel}", self.upload, "update_offer"),
                 (f"/v1/admin/releases/{self.other}", release_body(os.urandom(100)),
                  "update_offer"),
                 (f"/v1/admin/rollouts/{self.ro}", {"release": rel, "stages": [1.0],
                                                    "machines": {"devices": [self.dev]}},
                  "update_offer"))
        for path, body, rule in steps:
            st, got = await a.call("PUT", path, body)
            if st not in (200, 201):
                self.note(rule, f"PUT {path} answered {st}: {str(got)[:100]}")
                return False
        return True

    async def run(self) -> None:
        if not await self.setup():
            return
        m = json.loads(self.upload["manifest"])
        url = IMAGE_PATH % (self.dev, self.rel)
        want = {"release": self.rel, "version": VERSION, "size": SIZE, "sha256": m["sha256"],
                "manifest": self.upload["manifest"], "signature": self.upload["signature"],
                "url": url}
        reply = await self.report()
        if reply is not None and reply.get("update") != want:
            self.note("update_offer", f"a report's reply offered {str(reply.get('update'))[:200]}"
                      f", not {self.rel} as uploaded")
        await self.download(url)
        for state, at in (("downloading", SIZE), ("done", None)):
            reply = await self.report({"release": self.rel, "state": state,
                                       **({"at": at} if at else {})})
            if reply is not None and reply.get("update") is not None:
                self.note("update_offer", f"offered again to a report with it in hand ({state})")
            st, got = await self.admin.call("GET", f"/v1/admin/rollouts/{self.ro}")
            seen = [d.get("state") for d in (got or {}).get("devices", [])
                    if isinstance(d, dict) and d.get("id") == self.dev] if isinstance(
                got, dict) else []
            if st != 200 or seen != [state]:
                self.note("update_status", f"the rollout's progress ({st}) says {seen} after a "
                          f"report saying {state}")
        reply = await self.report()
        if reply is not None and reply.get("update") is not None:
            self.note("update_offer", "offered again once the device said done")

    async def download(self, url: str) -> None:
        got = b""
        for start in range(0, SIZE, MAX_RANGE):
            end = min(start + MAX_RANGE, SIZE) - 1
            st, body, cr = await self.get(url, start, end)
            if (st, cr) != (206, f"bytes {start}-{end}/{SIZE}"):
                self.note("update_download", f"range {start}-{end}: {st}, Content-Range {cr}")
            got += body
        if got != self.image:
            self.note("update_download", f"the ranges are {len(got)} bytes, SHA-256 "
                      f"{hashlib.sha256(got).hexdigest()[:16]}..., not the image's")
        other = IMAGE_PATH % (self.dev, self.other)
        cases = (  # (what, path, start, end, key, Range sent, the statuses that are right)
            ("END past the end", url, SIZE - 10, SIZE + 100, None, None, {206}),
            ("START at the size", url, SIZE, SIZE + 9, None, None, {416}),
            ("over 65536 bytes", url, 0, MAX_RANGE, None, None, {400}),
            ("a release not offered", other, 0, 9, None, None, {404}),
            ("another key's signature", url, 0, 9, secrets.token_hex(32), None, {401, 403}),
            ("a Range other than signed", url, 0, 9, None, "bytes=0-19", {401, 403}))
        for what, path, start, end, key, rng, ok in cases:
            st, body, cr = await self.get(path, start, end, key, rng)
            if st not in ok:
                self.note("update_download", f"{what}: {st}, not {sorted(ok)}")
            elif st == 206 and (body, cr) != (self.image[-10:],
                                              f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}"):
                self.note("update_download", f"{what}: {len(body)} bytes, Content-Range {cr}")
