"""The emulated brewmeter cloud: protocol v1 (docs/protocol.yaml) over HTTP(S), with an
SQLite ledger, billing, the merchant of replenishment orders and fault injection.

    from brewmeter.cloud import CloudServer, Ledger, Merchant, Faults, make_app, auth

Importing this package is cheap (aiohttp loads on first use of the server names), so the
`brewmeter` command can build its parser with `add_arguments` and run with `run`."""

from __future__ import annotations

import argparse
from typing import Any

from brewmeter.cloud.options import add_arguments

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


def run(args: argparse.Namespace) -> int:
    """Run `brewmeter cloud` from parsed arguments: until SIGINT/SIGTERM, then 0."""
    from brewmeter.cloud.server import run_args

    return run_args(args)
