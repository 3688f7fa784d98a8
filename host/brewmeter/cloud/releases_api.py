"""The JSON API of releases and rollouts (releases.py): the operator uploads a signed
release, starts a rollout, pauses, resumes or stops it and reads its progress; an owner
reads what their machines run and their update state. Every change is in the audit log."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from brewmeter.cloud import roles
from brewmeter.cloud.errors import Refused
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
