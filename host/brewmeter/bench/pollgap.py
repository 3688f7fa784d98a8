"""poll_gap_*: how long the event loop leaves the sensor loop unpolled on the emulated board
while it works elsewhere (a PIN check, a DNS that never answers, TLS, an update's download
and verify)."""

from __future__ import annotations

import base64
import statistics
import tempfile
import time
from pathlib import Path

from brewmeter.bench.boot_heap import _image
from brewmeter.cloud.server import CloudServer
from brewmeter.emulator.board import Board
from brewmeter.emulator.common import read_profile
from brewmeter.emulator.control import BoardControl
from brewmeter.flasher import READY
from brewmeter.flashfiles import emulator_provision
from brewmeter.runs.demo import cloud_for


def _sync_ended_since(port: str, t0: float, timeout: float = 60) -> None:
    """Wait until the console says a sync ended after `t0` (time.monotonic())."""
    from brewmeter import fieldtech

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        age = fieldtech.ask(port, "status", timeout=timeout)["last_sync_age_s"]
        if age is not None and age + 1 <= time.monotonic() - t0:  # (whole seconds, floored)
            return
        time.sleep(0.5)
    raise RuntimeError("no sync ended")


def poll_gap(runs: int = 3) -> dict[str, float]:
    """The longest gap between two of the sensor loop's polls on the emulated board (the
    board's `poll_gap`: timed where the loop reads the flow counter, nothing added to the
    firmware) while the event loop is busy elsewhere, per scenario the median over `runs`
    of the longest in each run: a tech's `service unlock --pin` (the PIN's hash checked);
    a sync while the DNS never answers (each lookup of the cloud's host name blocks 10 s,
    as lwIP's can: the sync that a brew makes due, then its retries); a sync over TLS that
    a brew made due (a handshake, the report and the reply); an update (poll_gap_update()).
    poll_gap_max_ms is the worst of the four."""
    from brewmeter import fieldtech

    out: dict[str, float] = {}

    def pin(board: Board, prov: dict) -> None:
        fieldtech.ask(board.serial_port, "status", timeout=10)  # the console loaded
        with board.control() as ctl:
            gaps = []
            for _ in range(max(runs, 5)):
                time.sleep(0.5)
                ctl.poll_gap()
                fieldtech.unlock(board.serial_port, prov["service_pin"], timeout=10)
                gaps.append(ctl.poll_gap())
        out["poll_gap_pin_ms"] = statistics.median(gaps)

    def dns(board: Board, prov: dict) -> None:
        with board.control() as ctl:
            ctl.dns(False, hang_ms=10000)
            _brew(ctl)
            gaps = []
            for _ in range(runs):
                t0 = time.monotonic()
                ctl.poll_gap()
                _sync_ended_since(board.serial_port, t0)
                gaps.append(ctl.poll_gap())
        out["poll_gap_dns_ms"] = statistics.median(gaps)

    def tls(board: Board, prov: dict, cloud: CloudServer) -> None:
        with board.control() as ctl:
            gaps = []
            for _ in range(runs):
                n = cloud.ledger.device(prov["device_id"])["reports"]
                _brew(ctl)
                ctl.poll_gap()
                end = time.monotonic() + 60
                while cloud.ledger.device(prov["device_id"])["reports"] == n:
                    if time.monotonic() > end:
                        raise RuntimeError("the sync never came")
                    time.sleep(0.1)
                time.sleep(0.5)  # the reply applied and saved
                gaps.append(ctl.poll_gap())
        out["poll_gap_tls_ms"] = statistics.median(gaps)

    with tempfile.TemporaryDirectory() as d:
        prov = emulator_provision("http://127.0.0.1:9")  # no cloud: the sync fails at once
        with Board(_image(Path(d), prov), board_profile="emulator") as board:
            board.wait_output(READY, timeout=30)
            pin(board, prov)
    for secure in (False, True):
        with tempfile.TemporaryDirectory() as d:
            prov = emulator_provision()
            with cloud_for(prov, tls=secure, report_delay_s=5) as cloud:
                if not secure:  # the cloud by name (the board's DNS answers for localhost)
                    prov["cloud_url"] = prov["cloud_url"].replace("127.0.0.1", "localhost")
                with Board(_image(Path(d), prov), board_profile="emulator") as board:
                    board.wait_output(READY, timeout=30)
                    _reported(cloud, prov["device_id"])
                    if secure:
                        tls(board, prov, cloud)
                    else:
                        dns(board, prov)
    out |= poll_gap_update(runs)
    out["poll_gap_max_ms"] = max(out.values())
    return out


def poll_gap_update(runs: int = 3) -> dict[str, float]:
    """poll_gap_update_ms: the longest gap between two sensor polls on the emulated board
    while its app takes an update from the emulated cloud, the median over `runs` boards:
    a release of this tree with another VERSION (runs/slots.py), signed with a release key
    the board's provisioning holds, rolled out to it; the report a brew made due takes the
    offer (the signature checked), then the app's update task downloads the image in ranges
    into the staging slot and hashes it back, during a second brew that holds off the
    switch; the gap is read from the first brew's end until the slot holds the image and
    the verify is over, then the brew ends and the board must boot the new app."""
    from brewmeter import release
    from brewmeter.runs.slots import build

    gaps = []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as d:
            image, _ = build(Path(d), "9.0.0")
            manifest = image.parent / release.MANIFEST
            key = Path(d) / "maker.key"
            release.keygen(key)
            sig = release.sign(key, manifest).read_bytes()
            prov = emulator_provision() | {
                "release_key": release.public_hex(Path(f"{key}.pub"))}
            with cloud_for(prov, report_delay_s=5) as cloud, Board(
                    _image(Path(d), prov), board_profile="emulator") as board:
                board.wait_output(READY, timeout=30)
                _reported(cloud, prov["device_id"])  # (the boot's report: no offer)
                cloud.ledger.releasing.add_release(
                    "r-bench", manifest.read_text(), base64.b64encode(sig).decode(),
                    image.read_bytes(), "bench")
                cloud.ledger.releasing.add_rollout(
                    f"bench-{i}", "r-bench", {"devices": [prov["device_id"]]}, [1], 0.5,
                    "bench")
                gaps.append(_during_update(board, image.read_bytes()))
    return {"poll_gap_update_ms": statistics.median(gaps)}


def _during_update(board: Board, image: bytes) -> int:
    """The longest poll gap from a brew's end (its report takes the offer) until the staging
    slot holds `image` and the verify is over (a second brew holds off the switch)."""
    slot = board.slot_images["romfs_new"]
    if slot.read_bytes()[:len(image)] == image:
        raise RuntimeError("the update was downloaded before its brew")
    with board.control() as ctl:
        _brew(ctl)
        ctl.press("espresso")  # no switch during a brew: the gap ends before it
        ctl.poll_gap()  # (the gap so far dropped)
        gap = 0
        end = time.monotonic() + 120
        while slot.read_bytes()[:len(image)] != image:
            if time.monotonic() > end:
                raise RuntimeError("the update was not downloaded")
            time.sleep(0.2)
            gap = max(gap, ctl.poll_gap())
        for _ in range(15):  # the verify: the slot hashed back a block at a time (3 s)
            time.sleep(0.2)
            gap = max(gap, ctl.poll_gap())
        mark = board.transcript_end()
        ctl.release("espresso")
        board.wait_output(READY + b" fw=9.0.0", timeout=60, start=mark)  # verified, switched
    return gap


def _reported(cloud: CloudServer, device_id: str) -> None:
    end = time.monotonic() + 30
    while not cloud.ledger.device(device_id)["reports"]:
        if time.monotonic() > end:
            raise RuntimeError("the boot's report never came")
        time.sleep(0.1)


def _brew(ctl: BoardControl) -> None:
    """An espresso of the emulator's min_brew_s and a half: a brew, so a report is due."""
    ctl.press("espresso")
    time.sleep(read_profile("emulator")[0]["min_brew_s"] + 0.5)
    ctl.release("espresso")
    time.sleep(0.5)  # debounced, counted and saved
