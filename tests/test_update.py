"""An update over the air on the device's side (firmware app/update.py), under CPython: the
device's own sync task against a small real aiohttp server that offers a release in its reply
and serves the image in signed ranges by the contract (docs/updates.md), releases made and
signed with the host's `release` code, the ROM slots' stand-in (brewmeter.standins.romslot)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import sys
from pathlib import Path

import pytest
from aiohttp import web
from app import protocol
from app.device import Device
from brewmeter import release
from brewmeter.standins.hostfs import DirFS
from brewmeter.standins.romslot import Slots
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

KEY = "cd" * 32
DEV = "bm-upd01"
REL = "r-2027-01-15"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    release.keygen(d / "maker.key")
    release.keygen(d / "other.key")
    return {"maker": d / "maker.key", "other": d / "other.key"}


def _sign(key: Path, text: bytes) -> bytes:
    k = serialization.load_pem_private_key(key.read_bytes(), password=None)
    return k.sign(text, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]


class Cloud:
    """Reports in, an offer of `image` in the reply to a report without an `update`, the
    image in ranges to a request signed as the contract says."""

    def __init__(self, image: bytes, manifest: bytes, sig: bytes, served: bytes | None = None):
        self.image, self.served = image, served if served is not None else image
        self.offer = {"release": REL, "version": json.loads(manifest)["version"],
                      "size": len(image), "sha256": hashlib.sha256(image).hexdigest(),
                      "manifest": manifest.decode(), "signature": base64.b64encode(sig).decode(),
                      "url": f"/v1/devices/{DEV}/releases/{REL}/image"}
        self.offering = True
        self.config: dict | None = None  # a desired configuration sent in every reply
        self.reports = 0
        self.statuses: list[dict] = []  # each report's update status
        self.ranges: list[tuple[int, int]] = []
        self.offer_seq: int | None = None
        self.withdrawn = False
        self.counters: dict[str, int] = {}  # the highest of each, as the cloud keeps them
        self.regressions: list[tuple[str, int, int]] = []  # (field, stored, reported)

    async def report(self, req: web.Request) -> web.Response:
        body = await req.read()
        d = json.loads(body)
        reply: dict = {"ack": [e["id"] for e in d["events"]]}
        self.reports += 1
        for k, v in d["counters"].items():  # (brews by kind: one level down)
            for f, n in (v.items() if isinstance(v, dict) else [("", v)]):
                f = f"{k}.{f}" if f else k
                if n < self.counters.get(f, n):
                    self.regressions.append((f, self.counters[f], n))
                self.counters[f] = max(n, self.counters.get(f, n))
        if self.config:
            reply["config"] = self.config
        if "update" in d:
            self.statuses.append(d["update"])
        elif self.offering:
            reply["update"] = self.offer
            self.offer_seq = d["seq"]
        return web.json_response(reply)

    async def image_part(self, req: web.Request) -> web.Response:
        rng = req.headers["Range"]
        msg = protocol.message("GET", req.path, int(req.headers[protocol.SEQ_HEADER]),
                               rng.encode())
        want = hmac.new(bytes.fromhex(KEY), msg, "sha256").hexdigest()
        if (req.headers[protocol.SIG_HEADER] != want or self.withdrawn
                or int(req.headers[protocol.SEQ_HEADER]) != self.offer_seq):
            return web.Response(status=404)
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng)
        assert m, rng
        start, end = int(m[1]), int(m[2])
        assert end - start + 1 <= 65536
        if start >= len(self.served):
            return web.Response(status=416)
        end = min(end, len(self.served) - 1)
        self.ranges.append((start, end))
        return web.Response(status=206, body=self.served[start:end + 1], headers={
            "Content-Range": f"bytes {start}-{end}/{len(self.served)}"})

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/devices/{id}/report", self.report)
        app.router.add_get("/v1/devices/{id}/releases/{rel}/image", self.image_part)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


class Loopback:
    async def up(self) -> None:
        return None


def _release(keys: dict[str, Path], board: str, image: bytes, signer: str = "maker",
             **kw) -> tuple[bytes, bytes]:
    m = release.manifest(image, boards=[board], version=kw.pop("version", "9.0.0"), mpy=0,
                         **kw)  # (mpy 0 and MicroPython 1.25 <= 3.11: CPython's facts)
    return m, _sign(keys[signer], m)


@pytest.fixture
def slots(monkeypatch: pytest.MonkeyPatch) -> Slots:
    s = Slots()
    monkeypatch.setitem(sys.modules, "romslot", s)
    from app import unload

    unload("update")  # (it imports romslot when it loads)
    from app import hw

    monkeypatch.setattr(hw, "reset", lambda: s.calls.append("reset"))
    return s


def _device(profile, root: Path, keys: dict[str, Path]) -> Device:  # noqa: ANN001
    (root / "provision.json").write_text(json.dumps(
        {"device_id": DEV, "release_key": release.public_hex(Path(f"{keys['maker']}.pub"))}))
    d = Device(profile, DirFS(root))
    d.boot(1, 0)
    return d


def _syncer(device: Device, url: str):  # noqa: ANN202
    from app.synctask import wire

    return wire(device, {"device_id": DEV, "key": KEY, "cloud_url": url, "ntp": ""},
                Loopback())


async def _until(cond, timeout: float = 10) -> None:  # noqa: ANN001
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.01)


def _state(s) -> str | None:  # noqa: ANN001
    return s.upd and s.upd["st"]


async def test_an_offer_is_downloaded_verified_and_switched_to(profile, tmp_path, keys, slots):
    image = os.urandom(100 * 1024 + 123)
    cloud = Cloud(image, *_release(keys, profile.board, image))
    async with cloud as url:
        d = _device(profile, tmp_path, keys)
        s = _syncer(d, url)
        assert await s.sync_once() == "ok"
        assert s.upd is not None and "app.update" in sys.modules
        await _until(lambda: "reset" in slots.calls)
        assert slots.calls == ["switch", "reset"]
        assert slots.switched == {"release": REL, "version": "9.0.0", "size": len(image),
                                  "sha256": hashlib.sha256(image).hexdigest(), "trial_s": 600}
        assert bytes(slots.slot.data[:len(image)]) == image
        # 32 KiB ranges, one after the other from the first byte
        assert cloud.ranges == [(0, 32767), (32768, 65535), (65536, 98303),
                                (98304, len(image) - 1)]
        assert slots.slot.writes == list(range(26))
        # After the reset: the new app on trial, its reports say so until it passed, then done
        slots.state = {"release": REL, "state": "trial"}
        d = _device(profile, tmp_path, keys)
        s = _syncer(d, url)
        assert _state(s) == "switched"
        assert await s.sync_once() == "ok"
        assert slots.calls[-1] == "passed"
        assert await s.sync_once() == "ok"
        assert slots.calls[-1] == "reported" and s.upd is None and s.no == REL
        assert "app.update" not in sys.modules  # dropped once nothing is in hand
        assert [x["state"] for x in cloud.statuses] == ["trial", "done"]
        cloud.offering = True
        assert await s.sync_once() == "ok"  # offered again: not taken again
        assert s.upd is None and "app.update" not in sys.modules


async def test_a_reboot_mid_download_resumes_at_the_first_block_not_written(
        profile, tmp_path, keys, slots):
    image = os.urandom(120 * 1024)
    cloud = Cloud(image, *_release(keys, profile.board, image))
    serve = cloud.image_part
    gone = asyncio.Event()

    async def cut(req: web.Request) -> web.StreamResponse:
        if len(cloud.ranges) != 1:
            return await serve(req)
        cloud.ranges.append((32768, 65535))  # the second range: 10 KiB of it, then nothing
        r = web.StreamResponse(status=206, headers={
            "Content-Range": f"bytes 32768-65535/{len(image)}", "Content-Length": "32768"})
        await r.prepare(req)
        await r.write(image[32768:32768 + 10240])
        await gone.wait()
        return r

    cloud.image_part = cut  # type: ignore[method-assign]
    async with cloud as url:
        d = _device(profile, tmp_path, keys)
        s = _syncer(d, url)
        assert await s.sync_once() == "ok"
        await _until(lambda: s.upd["at"] >= 40960)
        await asyncio.sleep(0.1)  # (the rest of the range never comes)
        for t in asyncio.all_tasks():  # the power goes: the download's task dies mid-range
            if t.get_coro().__name__ == "_run":  # type: ignore[union-attr]
                t.cancel()
        await asyncio.sleep(0.05)
        gone.set()
        sys.modules.pop("app.update", None)
        at = json.loads(d.state.read("upd"))["at"]
        assert at == 40960  # two whole blocks of the second range: the third lost
        statuses, asked = len(cloud.statuses), len(cloud.ranges)
        d = _device(profile, tmp_path, keys)
        s = _syncer(d, url)  # the record read at boot: the download goes on
        assert s.upd["at"] == at
        await _until(lambda: "reset" in slots.calls)
        assert cloud.ranges[asked][0] == at  # asked again from there, not from 0
        assert cloud.ranges[-1][1] == len(image) - 1
        assert bytes(slots.slot.data[:len(image)]) == image
        assert len(cloud.statuses) == statuses


@pytest.mark.parametrize("case, reason", [
    ("tampered", "update_bad_hash"),
    ("other_key", "update_bad_signature"),
    ("older", "update_not_newer"),
    ("offer_differs", "update_bad_manifest"),
    ("no_slot", "update_flash_failed"),
    ("withdrawn", "update_withdrawn"),
])
async def test_a_bad_release_is_refused_reported_once_and_not_taken_again(
        profile, tmp_path, keys, slots, case, reason):
    image = os.urandom(20 * 1024)
    served = None
    signer, version = "maker", "9.0.0"
    if case == "tampered":
        served = bytearray(image)
        served[12345] ^= 1
        served = bytes(served)
    elif case == "other_key":
        signer = "other"
    elif case == "older":
        version = "0.0.9"
    elif case == "no_slot":
        slots.slot = None
    cloud = Cloud(image, *_release(keys, profile.board, image, signer, version=version),
                  served)
    if case == "offer_differs":
        cloud.offer["size"] += 1
    cloud.withdrawn = case == "withdrawn"
    async with cloud as url:
        d = _device(profile, tmp_path, keys)
        s = _syncer(d, url)
        assert await s.sync_once() == "ok"
        await _until(lambda: _state(s) == "failed")
        assert await s.sync_once() == "ok"  # reported, acknowledged: dropped
        assert cloud.statuses[-1] == {"release": REL, "state": "failed", "reason": reason}
        assert s.upd is None and s.no == REL and "app.update" not in sys.modules
        assert await s.sync_once() == "ok"  # offered again: not taken
        assert s.upd is None and len(cloud.statuses) == 1
        assert "switch" not in slots.calls
        s = _syncer(_device(profile, tmp_path, keys), url)  # nor after a reboot
        assert s.no == REL and s.upd is None


async def test_the_report_carries_the_downloads_progress(profile, tmp_path, keys, slots):
    image = os.urandom(64 * 1024)
    cloud = Cloud(image, *_release(keys, profile.board, image))
    gate = asyncio.Event()
    serve = cloud.image_part

    async def slow(req: web.Request) -> web.Response:
        if cloud.ranges:
            await gate.wait()
        return await serve(req)

    cloud.image_part = slow  # type: ignore[method-assign]
    async with cloud as url:
        d = _device(profile, tmp_path, keys)
        s = _syncer(d, url)
        assert await s.sync_once() == "ok"
        await _until(lambda: s.upd["at"] == 32768)
        assert await s.sync_once() == "ok"
        gate.set()
        await _until(lambda: "reset" in slots.calls)
    assert cloud.statuses == [{"release": REL, "state": "downloading", "at": 32768}]


@pytest.mark.parametrize("reply", [
    {"status": 206, "Content-Range": "bytes 4096-36863/20480"},  # not the range asked
    {"status": 206, "Content-Range": "bytes 0-32767/99999"},  # another size
    {"status": 206, "Content-Range": "bytes 0-20479/20480", "extra": 100},  # more than asked
    {"status": 200},  # the whole image, not a range
])
async def test_a_range_reply_that_is_not_what_was_asked_writes_nothing(
        profile, tmp_path, keys, slots, reply):
    image = os.urandom(20 * 1024)
    cloud = Cloud(image, *_release(keys, profile.board, image))

    async def wrong(req: web.Request) -> web.Response:
        cloud.ranges.append((0, 0))
        headers = {k: v for k, v in reply.items() if k == "Content-Range"}
        return web.Response(status=reply["status"], headers=headers,
                            body=image + bytes(reply.get("extra", 0)))

    cloud.image_part = wrong  # type: ignore[method-assign]
    async with cloud as url:
        s = _syncer(_device(profile, tmp_path, keys), url)
        assert await s.sync_once() == "ok"
        await _until(lambda: cloud.ranges)
        await asyncio.sleep(0.2)
        assert slots.slot.writes == [] and s.upd["at"] == 0 and _state(s) == "offered"


def test_every_reason_the_device_reports_is_one_the_protocol_names():
    import yaml

    root = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((root / "docs" / "protocol.yaml").read_text())
    reasons = set(doc["components"]["schemas"]["UpdateStatus"]["properties"]["reason"]["enum"])
    codes = set(re.findall(r'"(update_[a-z_]+)"',
                           (root / "firmware" / "app" / "update.py").read_text()))
    assert codes == {"update_flash_failed", "update_bad_manifest", "update_withdrawn",
                     "update_truncated", "update_bad_hash"}
    assert codes <= reasons


async def test_a_cut_between_the_switch_and_its_record_is_read_right_at_boot(
        profile, tmp_path, keys, slots):
    from app import VERSION

    d = _device(profile, tmp_path, keys)
    d.state.read("upd")
    d.state.write("upd", json.dumps({  # verified, switched, reset before the record said so
        "r": REL, "u": "/x", "q": 1, "at": 4096, "st": "ready", "v": VERSION, "n": 4096,
        "h": "00" * 32, "t": 600}).encode())
    slots.state = {"release": REL, "state": "trial"}  # the new app (VERSION) on trial
    s = _syncer(_device(profile, tmp_path, keys), "http://127.0.0.1:9")
    assert s.upd == {"r": REL, "st": "switched", "v": VERSION, "ss": slots.state}
    assert "switch" not in slots.calls
    slots.state = None  # its end reported, the record not yet saved so
    s = _syncer(_device(profile, tmp_path, keys), "http://127.0.0.1:9")
    assert s.upd is None and s.no == REL
