"""Schemathesis hooks for testing the cloud against docs/protocol.yaml (test_schemathesis.py
runs `st run` with SCHEMATHESIS_HOOKS pointing here): the admin token for the operator's
endpoints, and for the report a device's signature over the exact bytes sent, so the signed
operation is tested like every other one. Device id and key come from the environment."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

import requests
import schemathesis

DEVICE = os.environ.get("BREWMETER_ST_DEVICE", "bm-st0001")
# The device that downloads: another, whose key no provisioning case replaces, in a rollout
# of its own that no rollout case stops.
DOWNLOADER = os.environ.get("BREWMETER_ST_DOWNLOADER", "bm-st0002")
KEY = os.environ.get("BREWMETER_ST_KEY", "11" * 32)
TOKEN = os.environ.get("BREWMETER_ST_TOKEN", "tok")
REPORT = "/v1/devices/{id}/report"
IMAGE = "/v1/devices/{id}/releases/{release}/image"  # signed over its Range, as a report
SIGN_ME = "sign-me"  # what the auth provider sets; the request is signed when it is sent


class Signer(requests.auth.AuthBase):
    """Signs a report as the device does: HMAC of method, path, the seq header and the body
    bytes as sent, but only when the auth provider asked (a request Schemathesis sends
    without auth, to see it refused, stays unsigned)."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        from brewmeter.cloud import auth
        from brewmeter.cloud.report import loads

        seq = r.headers.get(auth.SEQ_HEADER, "")
        if r.headers.get(auth.SIG_HEADER) != SIGN_ME or not auth.SEQ.fullmatch(seq):
            return r
        body = r.body or b""
        body = body.encode() if isinstance(body, str) else body
        if r.method == "GET":  # a download's range: the Range header in the body's place
            body = r.headers.get("Range", "").encode()
        # The header is the body's seq, as a device sends it (the protocol says they are
        # equal, which a schema cannot): so positive cases reach the ledger.
        try:
            doc = loads(body)  # as the cloud reads it (5.0 is 5)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and type(doc.get("seq")) is int and \
                auth.SEQ.fullmatch(str(doc["seq"])):
            seq = r.headers[auth.SEQ_HEADER] = str(doc["seq"])
        r.headers[auth.SIG_HEADER] = auth.sign(bytes.fromhex(KEY), r.method or "POST",
                                               urlsplit(r.url).path, seq, body)
        return r


@schemathesis.auth()
class Credentials:
    def get(self, case: Any, ctx: Any) -> str:
        return TOKEN

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = case.headers or {}
        if ctx.operation.path in (REPORT, IMAGE):
            case.headers["X-Brewmeter-Signature"] = SIGN_ME
        else:
            case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.path in (REPORT, IMAGE):
        kwargs["auth"] = Signer()
    # No case pauses or stops the downloader's rollout (a link may name it from a list).
    if case.path_parameters and case.path_parameters.get("rollout") == DOWNLOADS:
        case.path_parameters["rollout"] = ROLLOUT


# The orders test_schemathesis.py leaves waiting for the owner: one for each decision.
WAITING = {"approve": "coffee-3", "decline": "tablets-2"}
RELEASE, ROLLOUT = "r-st", "ro-st"  # the release and the rollout test_schemathesis.py made
DOWNLOADS = "ro-dl"  # ... and the downloader's rollout


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    """Every valid device id becomes the one provisioned device (another would simply be
    unknown), and every valid order id the order waiting for that decision (the first
    decides it, the rest meet a decided one); an invalid one (a negative case) stays as
    generated."""
    from brewmeter.cloud.shared import is_device_id, parse_order
    from brewmeter.cloud.shared import protocol as P

    if path_parameters and is_device_id(path_parameters.get("id")):
        path_parameters["id"] = DOWNLOADER if context.operation.path == IMAGE else DEVICE
    if path_parameters and parse_order(path_parameters.get("order")) is not None:
        path_parameters["order"] = WAITING[context.operation.path.rsplit("/", 1)[1]]
    # The rollout test_schemathesis.py made, for every operation on one but the one that
    # makes one (a new id there).
    # The download asks for the release test_schemathesis.py rolled out to the downloader.
    if (path_parameters and context.operation.path == IMAGE
            and P.is_name(path_parameters.get("release"))):
        path_parameters["release"] = RELEASE
    if (path_parameters and P.is_name(path_parameters.get("rollout"))
            and context.operation.method.upper() != "PUT"):
        path_parameters["rollout"] = ROLLOUT
    return path_parameters


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """Provisioning keeps the device's key (a new one would leave no report signable)."""
    if (context.operation.path == "/v1/admin/devices/{id}" and isinstance(body, dict)
            and isinstance(body.get("key"), str) and re.fullmatch(r"[0-9a-fA-F]{64}",
                                                                   body["key"])):
        body["key"] = KEY
    # A new rollout names the release test_schemathesis.py uploaded.
    if (context.operation.path == "/v1/admin/rollouts/{rollout}" and isinstance(body, dict)
            and isinstance(body.get("release"), str) and re.fullmatch(r"[A-Za-z0-9_-]{1,32}",
                                                                       body["release"])):
        body["release"] = RELEASE
    return body

