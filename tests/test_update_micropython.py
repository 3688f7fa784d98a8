"""An update's download and verify (firmware app/update.py) under the MicroPython unix port,
through its own non-blocking socket, against a real HTTP server on 127.0.0.1 serving the
image in ranges (brewmeter.bench.update): the whole image, a resume after a reboot, a
tampered image and a withdrawn release."""

from __future__ import annotations

import hashlib
import os

import pytest
from brewmeter.bench.update import fetch, serving

pytestmark = pytest.mark.slow


def test_the_image_is_written_verified_and_the_polls_go_on(tmp_path):
    image = os.urandom(100 * 1024 + 77)
    with serving(image) as srv:
        got = fetch(srv, image, tmp_path)
    assert got["rec"]["st"] == "ready" and got["rec"]["at"] == len(image)
    assert got["slot_sha256"] == hashlib.sha256(image).hexdigest()
    assert srv.ranges == [(0, 32767), (32768, 65535), (65536, 98303), (98304, len(image) - 1)]
    assert not got["busy"]  # the HTTP client free for the sync's next report


def test_a_reboot_resumes_at_the_first_block_not_written(tmp_path):
    image = os.urandom(64 * 1024 + 5)
    # A record saved at 40 KiB (the slot here is new: blank before it, what it then verifies)
    slot = b"\xff" * 40960 + image[40960:]
    with serving(image) as srv:
        got = fetch(srv, image, tmp_path, at=40960, digest=hashlib.sha256(slot).hexdigest())
    assert srv.ranges == [(40960, len(image) - 1)]  # from there, not from 0
    assert got["rec"]["st"] == "ready" and got["slot_sha256"] == hashlib.sha256(slot).hexdigest()


def test_a_tampered_image_or_a_withdrawn_release_fails_with_its_reason(tmp_path):
    image = os.urandom(20 * 1024)
    bad = bytearray(image)
    bad[5000] ^= 1
    with serving(bytes(bad)) as srv:
        got = fetch(srv, image, tmp_path / "a")
    assert (got["rec"]["st"], got["rec"]["why"]) == ("failed", "update_bad_hash")
    with serving(image) as srv:
        srv.withdrawn = True
        got = fetch(srv, image, tmp_path / "b")
    assert (got["rec"]["st"], got["rec"]["why"]) == ("failed", "update_withdrawn")
