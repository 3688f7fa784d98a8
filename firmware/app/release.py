# A release offered over the air, checked before anything of it runs (docs/updates.md): its
# manifest signed with the maker's release key (RSA-2048, PKCS#1 v1.5, SHA-256, e = 65537:
# one pow()), meant for this board, this MicroPython and a newer version, within the ROM
# slot; then the image's SHA-256 over the bytes read back. Pure. Loaded only while an update
# is checked, never at boot or during a sync. Each refusal is a fault code the cloud sees.
import hashlib
import json

from micropython import const

_CHUNK = const(4096)  # the most read at once: the device's buffer
MAX_MANIFEST = const(1024)
# A SHA-256 DigestInfo's prefix (RFC 8017, 9.2 note 1).
_SHA256_INFO = b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20"


def offer(manifest, sig, key, board, micropython, mpy, running, rom_bytes):
    """The manifest (a dict) if this device may install the release it describes, else the
    refusal (a str). `manifest`: the exact bytes signed; `sig`: the 256-byte signature;
    `key`: the release key's modulus (256 bytes, big-endian; None: the device has none);
    `board`: its profile's board; `micropython`: sys.implementation.version; `mpy`:
    sys.implementation._mpy; `running`: app.VERSION; `rom_bytes`: the ROM slot's size."""
    if not key:
        return "update_no_key"
    if len(manifest) > MAX_MANIFEST:
        return "update_bad_manifest"
    n = int.from_bytes(key, "big")
    s = int.from_bytes(sig, "big")
    # EMSA-PKCS1-v1_5 for a 2048-bit key: 00 01 FF..FF 00, the DigestInfo, the digest.
    # Compared whole, never parsed.
    em = b"\x00\x01" + b"\xff" * 202 + b"\x00" + _SHA256_INFO + hashlib.sha256(manifest).digest()
    if (len(key) != 256 or len(sig) != 256 or s >= n
            or pow(s, 65537, n) != int.from_bytes(em, "big")):
        return "update_bad_signature"
    try:
        m = json.loads(manifest)
        new = list(map(int, m["version"].split(".")))  # (no comprehension: code on the heap)
        size, boards, trial = m["size"], m["boards"], m["trial_s"]
        if not (m["format"] == 1 and type(size) is int and size > 0 and type(trial) is int
                and trial > 0 and len(bytes.fromhex(m["sha256"])) == 32
                and type(boards) is list):
            raise ValueError
        fw = m["mpy"] == mpy & 0xFF and tuple(micropython[:3]) >= tuple(m["micropython"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return "update_bad_manifest"
    if board not in boards:
        return "update_wrong_board"
    if not fw:
        return "update_wrong_firmware"
    if new <= list(map(int, running.split("."))):
        return "update_not_newer"
    if size > rom_bytes:
        return "update_too_big"
    return m


def image(stream, m, buf):
    """None if the first m["size"] bytes of `stream` (the ROM slot read back, or a file) are
    the image `m` (a manifest offer() took) names, else the refusal. Reads into `buf` at most
    4 KiB at a time."""
    h = hashlib.sha256()
    mv = memoryview(buf)
    left = m["size"]
    while left:
        k = stream.readinto(mv[:min(left, len(buf), _CHUNK)])
        if not k:
            return "update_truncated"
        h.update(mv[:k])
        left -= k
    return None if h.digest() == bytes.fromhex(m["sha256"]) else "update_bad_hash"
