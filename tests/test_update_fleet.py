"""Updating a fleet over the air, end to end on emulated boards and the emulated cloud: a
release of this tree with another VERSION (the visible change: `brewmeter ready fw=9.0.0`
and the version the cloud sees), built and signed by the host's `release` code, uploaded
and rolled out by an operator through the cloud's admin API; each board's own sync takes
the offer, downloads it in signed ranges, switches, boots the new app on trial and reports
done; the rollout completes, and every brew is counted on the boards and in the cloud."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from brewmeter import fieldtech, release
from brewmeter.cloud.server import cloud_thread
from brewmeter.emulator.board import Board
from brewmeter.flasher import READY, Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.profiles import BOARDS
from brewmeter.runs.slots import build
from test_update import _sign

pytestmark = [pytest.mark.board, pytest.mark.slow]


def _admin(cloud, method: str, path: str, body: dict | None = None) -> dict:  # noqa: ANN001
    req = urllib.request.Request(cloud.url + path, method=method, headers={
        "Authorization": f"Bearer {cloud.admin_token}", "Content-Type": "application/json"},
        data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _until(cond, timeout: float, what: str) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _brew(board: Board, min_brew_s: float) -> None:
    ctl = board.control()
    ctl.press("espresso")
    ctl.pulses(100)
    time.sleep(min_brew_s + 0.5)
    ctl.release("espresso")


def test_a_release_rolled_out_to_a_fleet_ends_on_every_board_with_its_counts(tmp_path):
    image, m = build(tmp_path, "9.0.0")
    manifest = (image.parent / release.MANIFEST).read_bytes()
    key = tmp_path / "maker.key"
    release.keygen(key)
    pub = release.public_hex(Path(f"{key}.pub"))
    provs = [emulator_provision() | {"release_key": pub} for _ in range(2)]
    prof = json.loads((BOARDS / "emulator.json").read_text())
    (tmp_path / "board.json").write_text(json.dumps(prof))
    with ExitStack() as stack:
        cloud = stack.enter_context(cloud_thread(
            ":memory:", devices=[(p["device_id"], p["key"]) for p in provs]))
        boards = []
        for i, p in enumerate(provs):
            cloud.ledger.set_config(p["device_id"], {"report_delay_s": 5})
            p["cloud_url"] = cloud.url
            b = stack.enter_context(Board(tmp_path / f"flash{i}.img",
                                          board_profile=str(tmp_path / "board.json")))
            Flasher(b.serial_port).flash(str(tmp_path / "board.json"), p)
            boards.append(b)
        for b in boards:
            _brew(b, prof["min_brew_s"])
        _admin(cloud, "PUT", "/v1/admin/releases/r-900", {
            "manifest": manifest.decode(),
            "signature": base64.b64encode(_sign(key, manifest)).decode(),
            "image": base64.b64encode(image.read_bytes()).decode()})
        _admin(cloud, "PUT", "/v1/admin/rollouts/spring", {
            "release": "r-900", "machines": {"devices": [p["device_id"] for p in provs]},
            "stages": [1]})
        marks = [b.transcript_end() for b in boards]
        for b, p in zip(boards, provs, strict=True):  # the next report takes the offer
            fieldtech.act(b.serial_port, "sync", p["service_pin"], (b"sync: ",), timeout=30)
        for b, mark in zip(boards, marks, strict=True):
            b.wait_output(READY + b" fw=9.0.0", timeout=120, start=mark)

        def states() -> list[str]:
            return [d["state"] for d in _admin(cloud, "GET", "/v1/admin/rollouts/spring")[
                "devices"]]

        _until(lambda: states() == ["trial", "trial"], 90, "both on trial")
        for b in boards:  # usage: the next report (5 s on) says done
            _brew(b, prof["min_brew_s"])
        _until(lambda: states() == ["done", "done"], 90, "both done")
        out = _admin(cloud, "GET", "/v1/admin/rollouts/spring")
        assert out["state"] == "complete"
        for p in provs:
            d = cloud.ledger.device(p["device_id"])
            assert d["counters"]["brews"]["espresso"] == 2  # both brews, none lost
