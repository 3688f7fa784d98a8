# Request signing: HMAC-SHA256 (RFC 2104) over method, path, sequence number and body, with
# the device's own key. MicroPython has hashlib.sha256 but no hmac module.
from binascii import hexlify
from hashlib import sha256

from app.protocol import message

_BLOCK = 64  # SHA-256's block size


def pads(key):
    """The HMAC's inner and outer padded keys for `key`."""
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    i = bytearray(key + bytes(_BLOCK - len(key)))
    o = bytearray(i)
    for n in range(_BLOCK):  # (a loop, not a generator: that is code held on the heap)
        i[n] ^= 0x36
        o[n] ^= 0x5C
    return bytes(i), bytes(o)


def hmac_sha256(key, msg, more=b""):
    """HMAC of `msg` + `more` (two parts: a caller need not join them into a copy)."""
    ipad, opad = pads(key)
    inner = sha256(ipad)
    inner.update(msg)
    inner.update(more)
    outer = sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def signature(key, method, path, seq, body):
    """Hex signature for the X-Brewmeter-Signature header (see docs/protocol.yaml)."""
    # The body as a second part: no copy of it joined to the head (heap).
    return hexlify(hmac_sha256(key, message(method, path, seq, b""), body)).decode()
