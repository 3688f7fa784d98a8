"""The emulated brewmeter cloud: protocol v1 (docs/protocol.yaml) over HTTP(S), with an
SQLite ledger, billing, the merchant of replenishment orders and fault injection.

    from brewmeter.cloud import CloudServer, Ledger, Merchant, Faults, make_app, auth

Importing this package is cheap (aiohttp loads on first use of the server names), so the
`brewmeter` command can build its parser with `add_arguments` and run with `run`."""

from __future__ import annotations

import argparse
from typing import Any

_LAZY = {
    "Ledger": "brewmeter.cloud.ledger", "Reply": "brewmeter.cloud.ledger",
    "SeqConflict": "brewmeter.cloud.ledger", "UnknownDevice": "brewmeter.cloud.ledger",
    "UnknownOrder": "brewmeter.cloud.ledger", "StateConflict": "brewmeter.cloud.ledger",
    "Merchant": "brewmeter.cloud.merchant",
    "BadReport": "brewmeter.cloud.report", "parse_report": "brewmeter.cloud.report",
    "CloudServer": "brewmeter.cloud.server", "Faults": "brewmeter.cloud.server",
    "make_app": "brewmeter.cloud.server", "run_cloud": "brewmeter.cloud.server",
    "cloud_main": "brewmeter.cloud.server", "cloud_thread": "brewmeter.cloud.server",
    "FAULT_KINDS": "brewmeter.cloud.server",
}

__all__ = [*_LAZY, "add_arguments", "run"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fault(s: str) -> tuple[str, float]:
    kind, _, p = s.partition("=")
    try:
        return kind, float(p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=PROBABILITY, got {s!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `brewmeter cloud`."""
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    p.add_argument("--db", default=":memory:", help="SQLite ledger file (default: in memory)")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate chain (PEM)")
    p.add_argument("--tls-key", help="... and this private key (PEM)")
    p.add_argument("--admin-token", help="bearer token for admin and query endpoints "
                   "(default: a random one, printed)")
    p.add_argument("--device", action="append", metavar="ID:KEYHEX",
                   help="provision a device (repeatable; kept in the ledger)")
    p.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"),
                   help="SQLite synchronous mode (FULL: an acknowledged report survives "
                   "power loss)")
    p.add_argument("--fault", action="append", type=_fault, metavar="KIND=P",
                   help="inject a fault into this fraction of reports (repeatable)")
    p.add_argument("--fault-seed", type=int, default=0,
                   help="the random seed of which reports get the --fault kinds")
    p.add_argument("--ship-after-s", type=float, default=86_400,
                   help="a placed order ships this long after it was placed or approved")
    p.add_argument("--deliver-after-s", type=float, default=172_800,
                   help="... and is delivered this long after shipping")
    p.add_argument("--out-of-stock", action="append", metavar="ITEM",
                   help="decline orders for this item (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Run `brewmeter cloud` from parsed arguments: until SIGINT/SIGTERM, then 0."""
    from brewmeter.cloud.server import run_args

    return run_args(args)
