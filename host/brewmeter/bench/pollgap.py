"""poll_gap_*: how long the event loop leaves the sensor loop unpolled on the emulated board
while it works elsewhere (a PIN check, a DNS that never answers, TLS)."""

from __future__ import annotations

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
    a brew made due (a handshake, the report and the reply). poll_gap_max_ms is the worst
    of the three."""
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
                    end = time.monotonic() + 30
                    while not cloud.ledger.device(prov["device_id"])["reports"]:
                        if time.monotonic() > end:
                            raise RuntimeError("the boot's report never came")
                        time.sleep(0.1)
                    if secure:
                        tls(board, prov, cloud)
                    else:
                        dns(board, prov)
    out["poll_gap_max_ms"] = max(out.values())
    return out


def _brew(ctl: BoardControl) -> None:
    """An espresso of the emulator's min_brew_s and a half: a brew, so a report is due."""
    ctl.press("espresso")
    time.sleep(read_profile("emulator")[0]["min_brew_s"] + 0.5)
    ctl.release("espresso")
    time.sleep(0.5)  # debounced, counted and saved
