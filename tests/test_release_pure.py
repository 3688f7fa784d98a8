"""The device's release checks (app/release.py) on what needs no key: how the image is read
back and hashed, and a device without a release key. Pure: also run under MicroPython
(tests/test_on_micropython.py); the signed cases are in test_release.py."""

import hashlib

from app import release


class Reads:
    """A stream (the ROM slot read back) that records each read's size and gives at most
    `most` bytes a read."""

    def __init__(self, data, most=1 << 30):
        self.data, self.at, self.most, self.sizes = data, 0, most, []

    def readinto(self, buf):
        self.sizes.append(len(buf))
        k = min(len(buf), self.most, len(self.data) - self.at)
        buf[:k] = self.data[self.at:self.at + k]
        self.at += k
        return k


def _image(n):
    data = bytes((i * 7 + 3) & 0xFF for i in range(n))
    return data, {"size": n, "sha256": hashlib.sha256(data).digest().hex()}


def test_the_image_is_read_in_chunks_of_at_most_4_kib_and_never_past_its_size():
    data, m = _image(20000)
    s = Reads(data + b"the rest of the slot")
    assert release.image(s, m, bytearray(16384)) is None
    assert max(s.sizes) == 4096 and sum(s.sizes) == 20000


def test_short_reads_are_read_on_and_an_early_end_is_truncated():
    data, m = _image(9000)
    assert release.image(Reads(data, most=1000), m, bytearray(4096)) is None
    assert release.image(Reads(data[:8999]), m, bytearray(4096)) == "update_truncated"


def test_one_bit_off_in_the_image_is_a_bad_hash():
    data, m = _image(5000)
    bad = bytearray(data)
    bad[4321] ^= 0x10
    assert release.image(Reads(bytes(bad)), m, bytearray(4096)) == "update_bad_hash"


def test_a_device_without_a_release_key_takes_no_update():
    assert release.offer(b"{}", b"\x00" * 256, None, "emulator", (1, 26, 0), 6, "0.1.0",
                         131072) == "update_no_key"
