"""Updating a fleet over the air, end to end on emulated boards and the emulated cloud: a
release of this tree with another VERSION (the visible change: `brewmeter ready fw=9.0.0`
and the version the cloud sees), built and signed by the host's `release` code, uploaded
and rolled out by an operator through the cloud's admin API; each board's own sync takes
the offer, downloads it in signed ranges, switches, boots the new app on trial and reports
done; the rollout completes, and every brew is counted on the boards and in the cloud. And a
release whose app crashes at boot: each board that takes it goes back to its old app by
itself, and the rollout halts by itself."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from brewmeter import fieldtech, release
from brewmeter.cloud.server import cloud_thread
from brewmeter.emulator.board import Board
from brewmeter.flasher import READY, Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.profiles import BOARDS
from brewmeter.runs.demo import read_counters
from brewmeter.runs.slots import OLD, build, running
from test_update import _sign

pytestmark = [pytest.mark.board, pytest.mark.slow]

PROFILE = json.loads((BOARDS / "emulator.json").read_text())


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


def _brew(boards: list[Board], min_brew_s: float) -> None:
    """An espresso poured on each of `boards` at once."""
    ctls = [b.control() for b in boards]
    for ctl in ctls:
        ctl.press("espresso")
        ctl.pulses(100)
    time.sleep(min_brew_s + 0.5)
    for ctl in ctls:
        ctl.release("espresso")


@contextmanager
def _fleet(tmp_path: Path, n: int, image: Path, rel: str,
           profile: dict | None = None) -> Iterator[tuple[Any, list[Board], list[dict]]]:
    """`n` emulated boards flashed with this tree (their provisioning holds the maker's
    release key, their profile is emulator.json | `profile`), each with an espresso counted,
    against an emulated cloud to which the operator uploaded `image` as release `rel`,
    signed with that key: (the cloud, the boards, their provisionings)."""
    manifest = (image.parent / release.MANIFEST).read_bytes()
    key = tmp_path / "maker.key"
    release.keygen(key)
    pub = release.public_hex(Path(f"{key}.pub"))
    provs = [emulator_provision() | {"release_key": pub} for _ in range(n)]
    (tmp_path / "board.json").write_text(json.dumps(PROFILE | (profile or {})))
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
        _brew(boards, PROFILE["min_brew_s"])
        _admin(cloud, "PUT", f"/v1/admin/releases/{rel}", {
            "manifest": manifest.decode(),
            "signature": base64.b64encode(_sign(key, manifest)).decode(),
            "image": base64.b64encode(image.read_bytes()).decode()})
        yield cloud, boards, provs


def _sync(board: Board, prov: dict) -> None:
    """The console's `sync`: a report now, whose reply may carry an offer."""
    fieldtech.act(board.serial_port, "sync", prov["service_pin"], (b"sync: ",), timeout=30)


def test_a_release_rolled_out_to_a_fleet_ends_on_every_board_with_its_counts(tmp_path):
    image, m = build(tmp_path, "9.0.0")
    with _fleet(tmp_path, 2, image, "r-900") as (cloud, boards, provs):
        _admin(cloud, "PUT", "/v1/admin/rollouts/spring", {
            "release": "r-900", "machines": {"devices": [p["device_id"] for p in provs]},
            "stages": [1]})
        marks = [b.transcript_end() for b in boards]
        for b, p in zip(boards, provs, strict=True):  # the next report takes the offer
            _sync(b, p)
        for b, mark in zip(boards, marks, strict=True):
            b.wait_output(READY + b" fw=9.0.0", timeout=120, start=mark)

        def states() -> list[str]:
            return [d["state"] for d in _admin(cloud, "GET", "/v1/admin/rollouts/spring")[
                "devices"]]

        _until(lambda: states() == ["trial", "trial"], 90, "both on trial")
        _brew(boards, PROFILE["min_brew_s"])  # usage: the next report (5 s on) says done
        _until(lambda: states() == ["done", "done"], 90, "both done")
        out = _admin(cloud, "GET", "/v1/admin/rollouts/spring")
        assert out["state"] == "complete"
        for p in provs:
            d = cloud.ledger.device(p["device_id"])
            assert d["counters"]["brews"]["espresso"] == 2  # both brews, none lost


# The halt's threshold (failed / finished above it halts): 1.0 never halts, to see the test
# fail without the halt.
HALT_OVER = 0.5


def test_a_rollout_of_a_release_that_crashes_at_boot_halts_by_itself(tmp_path):
    """Three machines, stages of half (two) then all: both machines of the first stage take
    the crashing release, go back to their old app by themselves within 3 boots with their
    counts and report update_trial_failed; the first failure halts the rollout (the cloud's
    own action in the audit log), and the third machine's next report is not offered it."""
    image, _ = build(tmp_path, "9.0.1", trial_s=3,
                     run_head="raise RuntimeError('a broken release')\n")
    # repl_idle_s: the crashed app leaves the REPL, which resets it (runs.slots.flashed)
    with _fleet(tmp_path, 3, image, "r-901", {"repl_idle_s": 5}) as (cloud, boards, provs):
        out = _admin(cloud, "PUT", "/v1/admin/rollouts/bad", {
            "release": "r-901", "machines": {"devices": [p["device_id"] for p in provs]},
            "stages": [0.5, 1], "max_failure_rate": HALT_OVER})
        assert out["stage_machines"] == [2, 3]
        ids = [d["id"] for d in out["devices"]]  # the rollout's order: the first two first
        assert [d["offered"] for d in out["devices"]] == [True, True, False]
        by_id = {p["device_id"]: (b, p) for b, p in zip(boards, provs, strict=True)}
        first, rest = [by_id[i] for i in ids[:2]], by_id[ids[2]]
        marks = [(b.transcript_end(), b.boots) for b, _ in first]
        for b, p in first:
            _sync(b, p)
        for (b, _), (mark, boots) in zip(first, marks, strict=True):
            b.wait_output(READY + f" fw={OLD}".encode(), timeout=150, start=mark)
            said = b.transcript(mark)
            assert b"a broken release" in said and b"fw=9.0.1" not in said
            assert b.boots - boots == 3  # two on the crashing release, the third back
        # What an operator reads: halted, both machines failed and why, by the cloud.
        get = lambda: _admin(cloud, "GET", "/v1/admin/rollouts/bad")  # noqa: E731
        _until(lambda: get()["failed"] == 2, 60, "both failures reported")
        out = get()
        assert out["state"] == "halted", out
        assert [(d["state"], d["reason"]) for d in out["devices"][:2]] == [
            ("failed", "update_trial_failed")] * 2
        assert out["offered"] == 0 and out["devices"][2]["state"] == "none"
        halts = [e for e in cloud.ledger.audit_log(None) if "halted by itself" in e["detail"]]
        assert [(e["who"], e["action"]) for e in halts] == [("cloud", "rollout")], halts
        assert halts[0]["detail"].startswith("bad: halted by itself: 1 of 1 machines failed")
        # The third machine reports after the halt and is not offered the release.
        b3, p3 = rest
        reports = cloud.ledger.device(p3["device_id"])["reports"]
        boots3 = b3.boots
        _sync(b3, p3)
        _until(lambda: cloud.ledger.device(p3["device_id"])["reports"] > reports, 30,
               "the third machine's report")
        assert cloud.ledger.releasing.update_of(p3["device_id"])["update"] is None
        assert get()["devices"][2] == {"id": ids[2], "state": "none", "offered": False,
                                       "reason": None}
        assert b3.boots == boots3
        # Every machine runs its old app (the update's journal closed once the cloud took
        # the failure) with its brew, on the board and in the cloud.
        for b, _ in first:
            assert b.rom_image.read_bytes() == b.slot_images["romfs_old"].read_bytes()
        for b, p in [*first, rest]:
            assert running(b) == (OLD, None)
            assert read_counters(b.serial_port, ["espresso"])["brews_total"] == 1
            d = cloud.ledger.device(p["device_id"])
            assert d["fw"] == OLD and d["counters"]["brews"]["espresso"] == 1
