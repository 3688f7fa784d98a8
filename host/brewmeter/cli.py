"""The `brewmeter` command: provision machines, simulate them, measure, run the emulated board
and cloud, and the field techs' serial tools. From a checkout: ./brewmeter COMMAND --help."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from brewmeter import Help

EXIT_BAD_INPUT = 2


def _simulate(args: argparse.Namespace) -> int:
    import asyncio

    from brewmeter.profiles import load_profile
    from brewmeter.runs import household
    from brewmeter.runs.usage import table

    plan = household.Plan(days=args.days, seed=args.seed, power_cuts=args.power_cuts,
                          net_faults=args.net_faults)
    for opt in ("timeline", "plot"):  # a bad path: said before the months are simulated
        path = getattr(args, opt)
        if path is not None and not Path(path).resolve().parent.is_dir():
            print(f"brewmeter: --{opt} {path}: no such folder", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("brewmeter: --plot needs matplotlib: pip install 'brewmeter[plot]'",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
    out = asyncio.run(household.run(load_profile(args.board), plan))
    if args.timeline or args.plot:
        from brewmeter.runs import timeline

        if args.timeline:
            timeline.write_csv(out.timeline, Path(args.timeline))
        if args.plot:
            timeline.plot(out.timeline, Path(args.plot),
                          f"{args.days} days, seed {args.seed}, board {args.board}")
    if args.json:
        print(json.dumps(out.json(), sort_keys=True))
    else:
        print(table(out.counters) + "\n\n" + household.table(out))
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from brewmeter.runs import fleet, fleetcheck

    try:
        plan = fleet.Plan(devices=args.devices, days=args.days, seed=args.seed,
                          outage=None if args.outage is None else fleet.parse_outage(args.outage),
                          board=args.board, restore_at=args.restore_at, db=args.db,
                          workers=args.workers)
        fleet.check_plan(plan)
    except ValueError as e:
        print(f"brewmeter fleet: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = fleet.run(plan, fleet.main_progress)
    print(json.dumps(out.json(), sort_keys=True) if args.json else fleetcheck.table(out))
    return 0 if out.checks["ok"] else 1


def _bench(args: argparse.Namespace) -> int:
    from brewmeter import bench
    from brewmeter.unixport import InterpreterError

    try:
        figures = bench.run(args.only)
    except (ValueError, InterpreterError) as e:
        print(f"brewmeter bench: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(figures, sort_keys=True) if args.json else bench.table(figures))
    return 0


def _powercut(args: argparse.Namespace) -> int:
    from brewmeter.runs import sweep

    result = sweep.run(exhaustive=args.exhaustive)
    out = {name: {k: getattr(s, k) for k in ("cuts", "lost", "doubled", "wrong_after",
                                             "window_exceeded", "outbox_lost")}
           for name, s in result.items()}
    failures = [f for s in result.values() for f in s.failures]
    by_op = sweep.by_op(result.values())
    if args.json:
        print(json.dumps(out | {"by_flash_op": by_op}, sort_keys=True))
    else:
        print(sweep.text(out, len(failures), by_op))
    for f in failures[:5]:
        print(f"FAILED: {json.dumps(f)}", file=sys.stderr)
    return 1 if failures else 0


def _conform(args: argparse.Namespace) -> int:
    from brewmeter.runs import conform
    from brewmeter.secretargs import ADMIN_TOKEN, need

    r = conform.main(args.url, need(args, ADMIN_TOKEN), args.ca, args.seed)
    if args.json:
        print(json.dumps(r, sort_keys=True))
    else:
        print(f"{'conforms' if r['ok'] else 'DOES NOT CONFORM'}: {r['url']} (seed {r['seed']}, "
              f"{r['reports']} reports, faults {r['faults']})")
        for v in r["violations"]:
            print(f"  {v['rule']} [{v['life']}]: {v['detail']}\n    rule: {v['says']}")
    return 0 if r["ok"] else 1


def _chaos(args: argparse.Namespace) -> int:
    from brewmeter.runs import chaos

    r = chaos.main(args.faults, args.seed)
    print(json.dumps(r, sort_keys=True) if args.json else chaos.text(r))
    return 0 if r["ok"] else 1


def _serial(args: argparse.Namespace) -> int:
    from brewmeter import fieldtech, ports
    from brewmeter.secretargs import PIN, need

    pin = need(args, PIN) if args.command in ("unlock", "sync", "refill") else ""
    try:
        port = ports.pick(args.port)
        if args.command == "console":
            return fieldtech.interactive(port)
        if args.command == "unlock":
            print(f"{port}: {fieldtech.unlock(port, pin)}")
            return 0
        if args.command in ("sync", "refill"):
            line = "sync" if args.command == "sync" else f"refill {args.item}"
            done = (b"sync: ",) if args.command == "sync" else (
                b"filter changed", b"descale recorded", f"{args.item} refilled".encode())
            said = fieldtech.act(port, line, pin, done,
                                 timeout=60 if args.command == "sync" else 5)
            print(f"{port}: {said}")
            return 0 if said in ("sync: ok",) or args.command == "refill" else 1
        if args.command == "restart":
            print(f"{port}: {fieldtech.restart(port)}")
            return 0
        if args.command == "report":
            out = fieldtech.report(port, args.out and Path(args.out), args.force)
            print(f"{port}: report written to {out}")
            return 0
        data = fieldtech.ask(port, args.command)
    except ports.PortError as e:
        print(f"brewmeter: {e}", file=sys.stderr)
        return 1
    except fieldtech.ReportError as e:
        print(f"brewmeter report: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(data, sort_keys=True) if args.json else fieldtech.show(args.command, data))
    return 0


def _provision(args: argparse.Namespace) -> int:
    from brewmeter import provision

    try:
        files = provision.new(args)
    except provision.ProvisionError as e:
        print(f"brewmeter provision: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for f in files:
        print(f"registered and wrote {f}")
    if not args.release_key:
        print("no --release-key: these machines will accept no update over the air (a "
              "provisioning with a release key, flashed again, enables them)")
    print(f"{len(files)} machines ready: ./flash.sh --port PORT --board BOARD "
          f"--provision {files[0]}")
    return 0


def _ports(args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    from brewmeter import ports

    print(ports.describe(list_ports.comports()))
    return 0


def _drive(args: argparse.Namespace) -> int:
    from brewmeter.emulator import handdrive
    from brewmeter.emulator.common import BoardError

    try:
        return handdrive.run(args)
    except (handdrive.DriveError, BoardError) as e:
        print(f"brewmeter {args.command}: {e}", file=sys.stderr)
        return 1


def _check_board(args: argparse.Namespace) -> int:
    from brewmeter.profiles import load_profile

    for name in args.profiles:
        p = load_profile(name)
        print(f"{p.source}: ok ({p.board}, {p.chip}, inputs {', '.join(p.kinds)})")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="brewmeter", description=__doc__, formatter_class=Help)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="one machine (its firmware, the emulated cloud as "
                       "merchant) through N days of use: counters, consumables, orders")
    p.add_argument("--days", type=int, default=30, help="how many days to simulate")
    p.add_argument("--seed", type=int, default=0,
                   help="the random seed of the days' use (same seed, same output)")
    p.add_argument("--power-cuts", type=int, default=0, help="power cuts, at random hours")
    p.add_argument("--net-faults", type=float, default=0.0,
                   help="share of report requests the network spoils (0-1)")
    p.add_argument("--board", default="emulator", help="profile name in boards/ or a path")
    p.add_argument("--timeline", metavar="CSV", help="write a row a day: brews, each "
                   "consumable's level and days left, orders, refills, stock-outs, reports "
                   "and report failures")
    p.add_argument("--plot", metavar="PNG", help="draw the levels over the days with orders, "
                   "deliveries and stock-outs marked (needs matplotlib: the plot extra)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("fleet", help="many machines (each its firmware and its household) "
                       "reporting to one emulated cloud, which may be down for hours: rates, "
                       "latency, the backlog after the outage, and the ledger checked")
    p.add_argument("--devices", type=int, default=100, help="how many machines")
    p.add_argument("--days", type=int, default=30, help="how many days")
    p.add_argument("--outage", metavar="DAY+HOURS", help="the cloud down for HOURS from the "
                   "start of day DAY (e.g. 10+6), its connections refused")
    p.add_argument("--restore-at", type=int, metavar="DAY", help="at the start of day DAY, "
                   "restore the cloud's ledger from its backup of a day before")
    p.add_argument("--seed", type=int, default=0,
                   help="the random seed of the households' use (same seed, same run)")
    p.add_argument("--db", help="the cloud's ledger, kept: a SQLite file, or a PostgreSQL "
                   "URL (as `brewmeter cloud --db`); default: a temporary file")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="the cloud's processes on its port (more than one: on PostgreSQL)")
    p.add_argument("--board", default="emulator", help="profile name in boards/ or a path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_fleet)

    p = sub.add_parser("bench", help="measure the benchmark figures")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--only", help="measure only this figure (or figures with this prefix)")
    p.set_defaults(func=_bench)

    p = sub.add_parser("powercut", help="cut the power at every flash operation of a day")
    p.add_argument("--exhaustive", action="store_true",
                   help="more days and boards, every cut under MicroPython too (minutes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_powercut)

    from brewmeter import cloud, secretargs

    # No abbreviations where a secret was once taken: `--pi=1234` would be quoted whole.
    p = sub.add_parser("cloud", help="run the emulated cloud (HTTP(S) + SQLite ledger)",
                       allow_abbrev=False)
    cloud.add_arguments(p)
    p.set_defaults(func=cloud.run)

    # Parsed by brewmeter.emulator.board.emulate_main itself (see main()); listed here for --help.
    sub.add_parser("emulate", help="run an emulated board: serial pty + control address")

    p = sub.add_parser("chaos", help="the device against the emulated cloud, with faults")
    p.add_argument("--faults", type=int, default=1000, help="network faults to inject")
    p.add_argument("--seed", type=int, default=0,
                   help="the random seed of the faults and the device's doings")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_chaos)

    p = sub.add_parser("conform", help="check a backend against docs/protocol.yaml, with the "
                       "firmware's own sync code through a fault proxy", allow_abbrev=False)
    p.add_argument("--url", required=True, help="the backend's base URL (as cloud_url)")
    secretargs.add(p, secretargs.ADMIN_TOKEN, ". The backend's admin API's bearer token")
    p.add_argument("--ca", help="PEM of the CA its TLS certificate chains to (https)")
    p.add_argument("--seed", type=int, default=0, help="the fault proxy's and the lives' seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_conform)

    for name, text in (("counters", "read the counters over the serial port"),
                       ("status", "read the device's status over the serial port"),
                       ("filter", "read the water filter's state over the serial port"),
                       ("consumables", "read what is left of each consumable, and orders"),
                       ("console", "the service console, interactive: exit, quit or Ctrl-] leave; "
                        "Ctrl-C is not sent to the machine (it would stop the app), Ctrl-T "
                        "then C sends one on purpose"),
                       ("restart", "bring the app back now (after Ctrl-C or mpremote)"),
                       ("unlock", "open a locked port for service (REPL, mpremote, flash.sh)"),
                       ("sync", "report to the cloud now (needs the service PIN)"),
                       ("refill", "record a new pack or a filter change, descale done "
                        "(needs the service PIN)"),
                       ("report", "everything for a visit report, into a JSON file")):
        p = sub.add_parser(name, help=text, description=text, allow_abbrev=False)
        p.add_argument("--port", help="serial port (default: the only ESP32 adapter)")
        if name == "report":
            p.add_argument("--out", help="the JSON file to write (default: "
                           "DEVICE_ID-DATE.json here)")
            p.add_argument("--force", action="store_true",
                           help="overwrite --out if it exists")
        elif name in ("unlock", "sync", "refill"):
            if name == "refill":
                p.add_argument("item", choices=("coffee", "filter", "descaler", "tablets"),
                               help="what is new")
            secretargs.add(p, secretargs.PIN, ". Without one nothing is sent and no try is "
                           "spent")
        elif name not in ("console", "restart"):
            p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=_serial)

    from brewmeter import provision

    p = sub.add_parser("provision", help="make machines ready to flash: ids, keys registered "
                       "with the cloud, one provisioning file each")
    provision.add_arguments(p)
    p.set_defaults(func=_provision)

    from brewmeter import release, rollout

    p = sub.add_parser("release", help="a release for updates over the air: build the app's "
                       "image and manifest, sign it, make the release key")
    rollout.add_arguments(release.add_arguments(p))
    p.set_defaults(func=lambda a: (release.run if a.action in ("build", "sign", "keygen")
                                   else rollout.run)(a))

    from brewmeter.emulator import handdrive

    handdrive.add_commands(sub, _drive)

    p = sub.add_parser("ports", help="list the serial ports with their USB ids, ESP32 "
                       "adapters marked")
    p.set_defaults(func=_ports)

    p = sub.add_parser("check-board", help="validate board profiles")
    p.add_argument("profiles", nargs="+", help="profile names in boards/ or paths")
    p.set_defaults(func=_check_board)
    _help_everywhere(ap)
    secretargs.mask_values(ap)
    return ap


def commands(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """`ap`'s subcommands by name (argparse keeps them in a private list)."""
    return {name: p for a in ap._actions if isinstance(a, argparse._SubParsersAction)
            for name, p in a.choices.items()}


def _help_everywhere(ap: argparse.ArgumentParser) -> None:
    """Every (sub)command's --help shows the defaults."""
    ap.formatter_class = Help
    for p in commands(ap).values():
        _help_everywhere(p)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from brewmeter import standins

    standins.install()  # the firmware runs here under CPython, for the command's whole run
    if argv[:1] == ["emulate"]:
        from brewmeter.emulator.board import emulate_main

        return emulate_main(argv[1:])
    args = parser().parse_args(argv)
    if getattr(args, "days", 1) < 1:
        print("brewmeter: --days must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    from brewmeter.profiles import ProfileError
    from brewmeter.secretargs import SecretError

    try:
        return args.func(args)
    except ProfileError as e:
        print(f"brewmeter: bad board profile: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SecretError as e:
        print(f"brewmeter {args.command}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
