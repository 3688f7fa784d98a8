"""`brewmeter press`, `flow` and `power-cut`: a running `brewmeter emulate` driven by hand,
through its control address (--control, or $BREWMETER_CONTROL, as emulate prints it)."""

from __future__ import annotations

import argparse
import os
import time

from brewmeter.emulator.control import BoardControl

CONTROL_ENV = "BREWMETER_CONTROL"


class DriveError(Exception):
    pass


def connect(address: str | None) -> BoardControl:
    address = address or os.environ.get(CONTROL_ENV)
    if not address:
        raise DriveError(f"which board? give --control HOST:PORT or set {CONTROL_ENV} (both "
                         f"as `./brewmeter emulate` prints them)")
    try:
        return BoardControl(address, timeout=60)
    except (OSError, ValueError) as e:
        raise DriveError(f"no emulated board answers at {address}: {e}") from None


def pulses_for(ml: float, per_litre: float) -> int:
    return round(ml * per_litre / 1000)


def press(ctl: BoardControl, kind: str, seconds: float, ml: float) -> str:
    """Hold input `kind` for `seconds` while `ml` of water flows, in half-second steps."""
    per_litre = ctl.pins().get("pulses_per_litre") or 0
    total = pulses_for(ml, per_litre)
    steps = max(1, round(seconds / 0.5))
    ctl.press(kind)
    sent = 0
    try:
        for i in range(1, steps + 1):
            n = total * i // steps - sent
            if n:
                ctl.pulses(n)
                sent += n
            time.sleep(seconds / steps)
    finally:
        ctl.release(kind)
    return f"{kind}: held {seconds:g} s, {ml:g} ml ({sent} flow pulses)"


def run(args: argparse.Namespace) -> int:
    ctl = connect(args.control)
    if args.command == "press":
        print(press(ctl, args.kind, args.seconds, args.ml))
    elif args.command == "flow":
        per_litre = ctl.pins().get("pulses_per_litre") or 0
        n = pulses_for(args.ml, per_litre)
        ctl.pulses(n)
        print(f"flow: {args.ml:g} ml ({n} pulses), no input pressed")
    else:
        r = ctl.power_cut()
        print(f"power cut: the board is back (boot {r['boots']})")
    return 0


def add_commands(sub: argparse._SubParsersAction, func) -> None:
    ctl_help = f"the board's control address HOST:PORT (default: ${CONTROL_ENV})"
    p = sub.add_parser("press", help="on a running emulated board: hold a drink's input "
                       "while water flows (a brew)")
    p.add_argument("kind", help="the input's name in the board profile, e.g. espresso")
    p.add_argument("--seconds", type=float, default=10, help="how long it is held")
    p.add_argument("--ml", type=float, default=30, help="water through the flow meter")
    p.add_argument("--control", help=ctl_help)
    p.set_defaults(func=func)
    p = sub.add_parser("flow", help="on a running emulated board: water through the flow "
                       "meter with no input pressed")
    p.add_argument("--ml", type=float, required=True, help="how much")
    p.add_argument("--control", help=ctl_help)
    p.set_defaults(func=func)
    p = sub.add_parser("power-cut", help="on a running emulated board: cut the power, wait "
                       "for it to boot again")
    p.add_argument("--control", help=ctl_help)
    p.set_defaults(func=func)
