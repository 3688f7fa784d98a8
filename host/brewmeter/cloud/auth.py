"""Report signing (protocol v1): HMAC-SHA256 over method, path, seq and the exact body bytes,
with the device's own 32-byte key. The cloud verifies with it; device-side tests sign and check
with it too, so both ends share one definition of the message."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from typing import Any

from brewmeter.cloud.shared import is_device_id
from brewmeter.cloud.shared import protocol as P

SEQ_HEADER = P.SEQ_HEADER
SIG_HEADER = P.SIG_HEADER
KEY_BYTES = 32
# is_device_id in words
DEVICE_ID_RULE = f"3-{P.MAX_NAME} of A-Z a-z 0-9 _ -, a letter or digit first"
SEQ = re.compile(r"0|[1-9][0-9]{0,15}")  # the seq header's text: decimal, no leading zeros



def new_key() -> str:
    """A fresh device key, as hex (what the provisioning file holds)."""
    return secrets.token_hex(KEY_BYTES)


def parse_key(key_hex: str) -> bytes:
    """The 32 key bytes of `key_hex`; ValueError if it is not 64 hex digits."""
    key = bytes.fromhex(key_hex)
    if len(key) != KEY_BYTES:
        raise ValueError(f"a device key is {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits)")
    return key


def check_device_id(device_id: str) -> str:
    """`device_id` if it is one (is_device_id), else ValueError."""
    if not is_device_id(device_id):
        raise ValueError(f"bad device id {device_id!r} ({DEVICE_ID_RULE})")
    return device_id


def report_path(device_id: str) -> str:
    return P.REPORT_PATH % device_id


def message(method: str, path: str, seq: int | str, body: bytes) -> bytes:
    """What is signed (the protocol's message): METHOD \\n PATH \\n SEQ \\n BODY, PATH without
    query string."""
    return P.message(method.upper(), path, int(seq), body)


def sign(key: bytes, method: str, path: str, seq: int | str, body: bytes) -> str:
    return hmac.new(key, message(method, path, seq, body), hashlib.sha256).hexdigest()


SIGNATURE = re.compile(r"[0-9a-f]{64}")


def verify(key: bytes, method: str, path: str, seq: str, body: bytes, signature: str) -> bool:
    """Whether `signature` is this request's. Anything that is not 64 hex digits (other
    characters, non-ASCII, the wrong length; a seq header that is no decimal seq) is not
    a match either."""
    got = signature.strip().lower()
    if not SIGNATURE.fullmatch(got) or not SEQ.fullmatch(seq):
        return False
    return hmac.compare_digest(sign(key, method, path, seq, body).encode(), got.encode())


def encode_report(report: dict[str, Any]) -> bytes:
    """Compact JSON, as the firmware sends it (any byte-exact encoding is fine: it is signed)."""
    return json.dumps(report, separators=(",", ":")).encode()


def signed_range(key: bytes | str, path: str, seq: int, start: int, end: int,
                 key_id: str | None = None) -> dict[str, str]:
    """The headers of a download's range request (GET `path`, Range: bytes=START-END) signed
    as the device signs it: the Range header's value in the body's place."""
    if isinstance(key, str):
        key = parse_key(key)
    rng = f"bytes={start}-{end}"
    return {"Range": rng, SEQ_HEADER: str(seq), SIG_HEADER: sign(key, "GET", path, seq,
                                                                 rng.encode()),
            **({P.KEY_HEADER: key_id} if key_id else {})}


def signed_report(device_id: str, key: bytes | str, report: dict[str, Any] | bytes,
                  seq: int | None = None) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) for POSTing `report` as `device_id`. `seq` defaults to
    report["seq"]; pass it to sign a raw body or to send a deliberately mismatched one."""
    if isinstance(key, str):
        key = parse_key(key)
    body = report if isinstance(report, bytes) else encode_report(report)
    if seq is None:
        if not isinstance(report, dict):
            raise ValueError("seq is needed to sign a raw body")
        seq = report["seq"]
    path = report_path(device_id)
    headers = {SEQ_HEADER: str(seq), SIG_HEADER: sign(key, "POST", path, seq, body),
               "Content-Type": "application/json"}
    return path, body, headers
