"""The JSON API of releases and rollouts (releases.py): the operator uploads a signed
release, starts a rollout, pauses, resumes or stops it and reads its progress; an owner
reads what their machines run and their update state. Every change is in the audit log."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any

from aiohttp import web

from brewmeter.cloud import auth, roles
from brewmeter.cloud.api import FAULTS, WORKER, _drop, _error, signed
from brewmeter.cloud.errors import Refused
from brewmeter.cloud.offers import IMAGE_PATH, MAX_RANGE
from brewmeter.cloud.releases import (
    DEFAULT_MAX_FAILURE_RATE,
    DEFAULT_STAGES,
    MAX_IMAGE,
    MAX_MANIFEST,
    BadRelease,
)
from brewmeter.cloud.report import loads
from brewmeter.cloud.roles import CALL, LEDGER

# An upload: the image in base64, the manifest (each character escaped at worst) and the
# signature, with room.
MAX_UPLOAD = 4 * -(-MAX_IMAGE // 3) + 12 * MAX_MANIFEST + 1024


async def _body(request: web.Request, limit: int) -> Any:
    """The JSON body, read up to `limit` bytes (413 past it: the app's own limit is a
    report's, smaller than an image)."""
    if (request.content_length or 0) > limit:
        raise Refused(413, f"body over {limit} bytes")
    data = bytearray()
    while chunk := await request.content.read(1 << 16):
        data += chunk
        if len(data) > limit:
            raise Refused(413, f"body over {limit} bytes")
    try:
        return loads(bytes(data))
    except ValueError as e:
        raise Refused(400, f"not JSON: {e}") from None


async def put_release(request: web.Request) -> web.Response:
    """PUT /v1/admin/releases/{release} {"manifest", "signature", "image"}."""
    who = roles.require(request, operator=True)
    d = await _body(request, MAX_UPLOAD)
    if not isinstance(d, dict) or set(d) != {"manifest", "signature", "image"} or not all(
            isinstance(v, str) for v in d.values()):
        raise Refused(400, 'expected {"manifest": "<its exact text>", "signature": '
                      '"<base64>", "image": "<base64>"}')
    try:
        image = base64.b64decode(d["image"], validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, "image: not base64") from None
    if len(image) > MAX_IMAGE:
        raise BadRelease(f"image: over {MAX_IMAGE} bytes")
    out, new = await request.app[CALL](request.app[LEDGER].releasing.add_release,
                                       request.match_info["release"], d["manifest"],
                                       d["signature"], image, who)
    return web.json_response(out, status=201 if new else 200)


async def get_releases(request: web.Request) -> web.Response:
    roles.require(request, operator=True)
    return web.json_response({"releases": await request.app[CALL](
        request.app[LEDGER].releasing.releases)})


async def put_rollout(request: web.Request) -> web.Response:
    """PUT /v1/admin/rollouts/{rollout} {"release", "machines", "stages",
    "max_failure_rate"}."""
    who = roles.require(request, operator=True)
    d = await _body(request, 1 << 20)
    keys = {"release", "machines", "stages", "max_failure_rate"}
    if not isinstance(d, dict) or not {"release", "machines"} <= set(d) <= keys or not (
            isinstance(d["release"], str) and isinstance(d.get("stages", []), list)):
        raise Refused(400, 'expected {"release": ID, "machines": {"percent": P} or '
                      '{"devices": [...]} or {"owner": NAME}, "stages": [...], '
                      '"max_failure_rate": F}')
    out = await request.app[CALL](request.app[LEDGER].releasing.add_rollout,
                                  request.match_info["rollout"], d["release"], d["machines"],
                                  d.get("stages", DEFAULT_STAGES),
                                  d.get("max_failure_rate", DEFAULT_MAX_FAILURE_RATE), who)
    return web.json_response(out, status=201)


async def get_rollouts(request: web.Request) -> web.Response:
    roles.require(request, operator=True)
    return web.json_response({"rollouts": await request.app[CALL](
        request.app[LEDGER].releasing.rollouts)})


async def get_rollout(request: web.Request) -> web.Response:
    roles.require(request, operator=True)
    return web.json_response(await request.app[CALL](request.app[LEDGER].releasing.rollout,
                                                     request.match_info["rollout"]))


async def control_rollout(request: web.Request) -> web.Response:
    """POST /v1/admin/rollouts/{rollout}/pause, /resume or /stop."""
    who = roles.require(request, operator=True)
    action = request.path.rsplit("/", 1)[1]
    return web.json_response(await request.app[CALL](
        request.app[LEDGER].releasing.control, request.match_info["rollout"], action, who))


async def get_update(request: web.Request) -> web.Response:
    """GET /v1/devices/{id}/update: what the machine runs, and its update state."""
    dev = request.match_info["id"]
    roles.require(request, dev)
    return web.json_response(await request.app[CALL](request.app[LEDGER].releasing.update_of,
                                                     dev))


RANGE = re.compile(r"bytes=([0-9]{1,10})-([0-9]{1,10})")  # one range, both ends given


async def get_image(request: web.Request) -> web.StreamResponse:
    """GET /v1/devices/{id}/releases/{release}/image with Range: bytes=START-END, signed by
    the device as a report is, over the Range header's value in the body's place: 206 and
    those bytes (END clipped to the image's end), 416 from START at or past its size, 400
    for another Range or one over MAX_RANGE bytes, 401 unsigned, 404 not offered to it. The
    injected faults (faults.py) apply as to a report; `garbage` flips the first byte."""
    app, dev = request.app, request.match_info["id"]
    faults = app.get(FAULTS)
    fault = faults.draw(dev, request.headers.get(auth.SEQ_HEADER)) if faults else None
    if fault in ("drop_before", "drop_after"):
        _drop(request)
    if fault and fault.startswith("error_"):
        assert faults is not None
        return _error(int(fault[-3:]), "injected fault",
                      headers={"Retry-After": str(faults.retry_after_s)})
    if fault == "restart":
        await app[WORKER].restart()
    elif fault == "delay":
        assert faults is not None
        await asyncio.sleep(faults.delay_s)
    rng = request.headers.get("Range", "")
    if not signed(request, dev, rng.encode("utf-8", "surrogateescape")):
        return _error(401, "unknown device, or missing or bad signature")
    m = RANGE.fullmatch(rng)
    if m is None or not 0 <= int(m[2]) - int(m[1]) < MAX_RANGE:
        return _error(400, f"Range: expected bytes=START-END, at most {MAX_RANGE} bytes")
    start = int(m[1])
    data, size = await app[WORKER].call(app[LEDGER].releasing.image_range, dev,
                                        request.match_info["release"], start, int(m[2]))
    if not data:
        return _error(416, f"the image has {size} bytes", headers={
            "Content-Range": f"bytes */{size}"})
    if fault == "garbage":
        data = bytes([data[0] ^ 0xFF]) + data[1:]
    headers = {"Content-Range": f"bytes {start}-{start + len(data) - 1}/{size}"}
    if fault == "truncate":
        resp = web.StreamResponse(status=206, headers=headers)
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[:len(data) // 2])
        _drop(request)
    return web.Response(status=206, body=data, headers=headers)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/admin/releases/{release}", put_release)
    r.add_get("/v1/admin/releases", get_releases)
    r.add_put("/v1/admin/rollouts/{rollout}", put_rollout)
    r.add_get("/v1/admin/rollouts", get_rollouts)
    r.add_get("/v1/admin/rollouts/{rollout}", get_rollout)
    for action in ("pause", "resume", "stop"):
        r.add_post(f"/v1/admin/rollouts/{{rollout}}/{action}", control_rollout)
    r.add_get("/v1/devices/{id}/update", get_update)
    r.add_get(IMAGE_PATH % ("{id}", "{release}"), get_image)
