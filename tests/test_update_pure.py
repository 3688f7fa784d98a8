"""The pure parts of an update on the device's side (firmware app/update.py, app/sync.py):
the offer's shape in a reply, the status in a report, the refusals made before anything is
downloaded. Also run under MicroPython (tests/test_on_micropython.py); the
download itself is in test_update.py."""

import json

from app import sync, update

OFFER = {"release": "r-1", "version": "9.0.0", "size": 5000, "sha256": "ab" * 32,
         "manifest": "{}", "signature": "AAAA", "url": "/v1/devices/bm-1/releases/r-1/image"}


def _reply(up):
    return json.dumps({"ack": [3], "update": up})


def test_a_well_shaped_offer_is_an_action_a_malformed_one_a_fault_and_the_ack_holds():
    todo, _ = sync.actions(_reply(OFFER), [3], 0, ["a"], lambda n: 0)
    assert todo == [("ack", [3]), ("update", OFFER)]
    for k, v in (("release", "r 1"), ("release", "x" * 33), ("url", "/x y"), ("url", "x"),
                 ("url", "/x\r\nHost: y"), ("url", "/" * 201), ("manifest", 5),
                 ("signature", None), ("size", "5000"), ("size", True)):
        bad = dict(OFFER)
        bad[k] = v
        todo, _ = sync.actions(_reply(bad), [3], 0, ["a"], lambda n: 0)
        assert todo == [("ack", [3]), ("fault", "update_bad_offer", "")], (k, v)
    for bad in ([1], "offer", 7):
        todo, _ = sync.actions(_reply(bad), [3], 0, ["a"], lambda n: 0)
        assert todo == [("ack", [3]), ("fault", "update_bad_offer", "")]


def test_a_report_carries_the_status_of_the_update_in_hand_and_nothing_without_one():
    snap = (1, 0, [], {})
    st = {"release": "r-1", "state": "downloading", "at": 40960}
    assert json.loads(sync.report(snap, 5, 0, 0, [], {}, update=st))["update"] == st
    assert "update" not in json.loads(sync.report(snap, 5, 0, 0, [], {}))


def test_the_status_in_each_state():
    rec = {"r": "r-1", "at": 12288, "st": "offered"}
    assert update.status(rec) == {"release": "r-1", "state": "offered"}
    rec["st"] = "downloading"
    assert update.status(rec) == {"release": "r-1", "state": "downloading", "at": 12288}
    for st in ("verifying", "ready"):  # (ready: verified, waiting for an idle moment)
        rec["st"] = st
        assert update.status(rec) == {"release": "r-1", "state": "verifying"}
    rec["st"], rec["why"] = "failed", "update_bad_hash"
    assert update.status(rec) == {"release": "r-1", "state": "failed",
                                  "reason": "update_bad_hash"}
    rec["st"] = "switched"  # the ROM slots say: trial, done or failed
    trial = {"release": "r-1", "state": "trial"}
    assert update.status(rec, trial) == trial


def test_an_offer_without_a_slot_or_a_release_key_is_refused_before_any_download():
    facts = ((1, 26, 0), 6)
    assert update.check(OFFER, b"\x01" * 256, "emulator", 0, facts) == "update_flash_failed"
    assert update.check(OFFER, None, "emulator", 131072, facts) == "update_no_key"
    bad = dict(OFFER)
    bad["signature"] = "not base64!"
    assert update.check(bad, b"\xff" * 256, "emulator", 131072, facts) == \
        "update_bad_signature"
