"""`./flash.sh --emulator`: start an emulated board and the emulated cloud, flash the board
with flash.sh's own steps, brew on it through the control address, and show the counters read
back over the serial port and from the cloud's ledger. Exits 0 only if every count arrived;
leaves nothing running."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from brewmeter import unixport
from brewmeter.emulator.board import Board
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import FlashError, emulator_provision
from brewmeter.private import write_new

if TYPE_CHECKING:  # the cloud: imported where used (see profiles.py)
    from brewmeter.cloud.server import CloudServer, Faults

# Reads the counters with the firmware's own storage code (the service console will replace
# this): mpremote interrupts the app, which has saved every completed brew already.
_READ = """from app.journal import DeviceFS, Store
from app.startup import load_counters
from app import readout
import json
c = load_counters(Store(DeviceFS(), '/counts'))
print('COUNTERS', json.dumps(readout.counters(c, %s)))
"""


@contextlib.contextmanager
def cloud_for(prov: dict, tls: bool = False, faults: Faults | None = None,
              **settings: int) -> Iterator[CloudServer]:
    """The emulated cloud on 127.0.0.1 knowing the device of `prov` (whose cloud_url, and
    with `tls` ca_cert, it fills in: a trustme CA signs the server's certificate), with
    `settings` as its desired configuration and `faults` (cloud.server.Faults) if given."""
    from brewmeter.cloud.server import cloud_thread

    server = None
    if tls:
        import ssl

        import trustme

        ca = trustme.CA()
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server)
        prov["ca_cert"] = ca.cert_pem.bytes().decode()
    with cloud_thread(":memory:", devices=[(prov["device_id"], prov["key"])],
                      ssl_context=server, faults=faults) as cloud:
        if settings:
            cloud.ledger.set_config(prov["device_id"], settings)
        prov["cloud_url"] = cloud.url
        yield cloud


def read_counters(port: str, kinds: list[str]) -> dict:
    out = subprocess.run([unixport.tool("mpremote"), "connect", port, "exec", _READ % kinds],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"^COUNTERS (.*)$", out.stdout, re.M)
    if not m:
        raise FlashError(f"could not read the counters back: {out.stdout}{out.stderr}")
    return json.loads(m[1])


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        image = args.image or str(Path(stack.enter_context(tempfile.TemporaryDirectory()))
                                  / "flash.img")
        prov = emulator_provision()
        cloud = stack.enter_context(cloud_for(prov, report_delay_s=5))
        board = stack.enter_context(Board(image, board_profile="emulator"))
        print(f"emulated board: serial {board.serial_port}, control "
              f"{board.control_address[0]}:{board.control_address[1]}; cloud {cloud.url}")
        flasher = Flasher(board.serial_port)
        flasher.flash("emulator", prov)
        print(f"flashed: device {prov['device_id']}; firmware up")
        owner = cloud.ledger.add_owner("owner")  # the machine's owner, for the web console
        cloud.ledger.assign(prov["device_id"], "owner")
        # The tokens go into files of their own, never onto the terminal (its scrollback, a
        # log or a screen share would keep them); they go when the demo ends, as the cloud.
        keep = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="brewmeter-demo-")))
        write_new(keep / "owner.token", owner + "\n")
        write_new(keep / "operator.token", cloud.admin_token + "\n")
        print(f"web console: {cloud.url}/console/ (sign in with the owner token in "
              f"{keep / 'owner.token'}: machine {prov['device_id']}; the operator's token is "
              f"in {keep / 'operator.token'}; readable by you alone, removed at the end)")
        kinds = sorted(board.profile["inputs"]) if board.profile else []
        before = read_counters(board.serial_port, kinds)
        flasher.restart()
        ctl = board.control()
        # One of each drink at once (they are separate inputs), then a rinse.
        for k in kinds:
            ctl.press(k)
        for _ in range(9):
            ctl.pulses(180)  # ~90 ml/s over the three: 1925 pulses per litre
            time.sleep(1)
        for k in kinds:
            ctl.release(k)
        time.sleep(0.5)
        ctl.press(kinds[0])
        time.sleep(1)
        ctl.release(kinds[0])
        time.sleep(1)
        after = read_counters(board.serial_port, kinds)
        flasher.restart()  # the app again, to send its report
        end = time.monotonic() + 30
        got = {}
        while time.monotonic() < end:
            got = cloud.ledger.device(prov["device_id"])["counters"]
            if got.get("brews_total") == after["brews_total"]:
                break
            time.sleep(0.5)
        print()
        print(f"{'counter':<17}{'before':>8}{'after':>8}{'cloud':>8}")
        for key in ("brews_total", *(f"brews.{k}" for k in kinds), "rinses", "water_ml"):
            b, a, c = (_get(before, key), _get(after, key), _get(got, key))
            print(f"{key:<17}{b:>8}{a:>8}{c:>8}")
        supplies = cloud.ledger.device(prov["device_id"]).get("supplies") or {}
        print("consumables     " + ", ".join(
            f"{name} {v.get('pct', '?')}% left" for name, v in sorted(supplies.items())))
        ok = (after["brews_total"] - before["brews_total"] == len(kinds)
              and after["rinses"] - before["rinses"] == 1
              and got.get("brews_total") == after["brews_total"])
        print("\nall counted, saved and synced" if ok else "\nMISMATCH: see above")
        if sys.stdin.isatty():  # someone is there: keep the console up for them
            input("the board and the cloud stay up for the web console: Enter stops them ")
        return 0 if ok else 1
    return 1


def _get(d: dict, key: str) -> object:
    for part in key.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d if d != {} else "-"
