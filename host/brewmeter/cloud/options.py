"""The options of `brewmeter cloud`: argparse only, so the `brewmeter` command builds its
parser without loading the server."""

from __future__ import annotations

import argparse

from brewmeter import secretargs


def _fault(s: str) -> tuple[str, float]:
    kind, _, p = s.partition("=")
    try:
        return kind, float(p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=PROBABILITY, got {s!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `brewmeter cloud`."""
    p.add_argument("action", nargs="?", choices=("backup", "restore"),
                   help="instead of serving: copy the --db ledger to PATH (SQLite's online "
                   "backup, or pg_dump: the cloud may be running), or replace it with the "
                   "backup at PATH (the cloud stopped; the replaced ledger kept as "
                   "DB.before-restore, on PostgreSQL PATH.before-restore)")
    p.add_argument("path", nargs="?", metavar="PATH", help="the backup file")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    p.add_argument("--db", default=":memory:",
                   help="the ledger: a SQLite file (default: in memory), or PostgreSQL: "
                   "postgresql://USER@HOST[:PORT]/DATABASE (its password in ~/.pgpass or "
                   "$PGPASSWORD, never in the URL)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="serve the port from N processes (SO_REUSEPORT), all on the --db "
                   "PostgreSQL database (a SQLite ledger takes one)")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate chain (PEM)")
    p.add_argument("--tls-key", help="... and this private key (PEM)")
    p.add_argument("--admin-token-file", metavar="FILE",
                   help="file holding the operator's bearer token for the admin and query "
                   "endpoints and the web console (else $BREWMETER_ADMIN_TOKEN); a FILE that "
                   "does not exist yet gets a new random token, made readable by you alone. "
                   "Neither: a new token in such a file, its path printed. Never on the "
                   "command line, where ps and shell history show it")
    secretargs.refuse(p, "admin-token", "--admin-token-file FILE or $BREWMETER_ADMIN_TOKEN")
    p.add_argument("--device-file", action="append", metavar="FILE",
                   help="register the device of this provisioning file (its device_id and "
                   "key, as `provision new` writes it; repeatable; kept in the ledger)")
    secretargs.refuse(p, "device", "--device-file FILE (a provisioning file with its "
                      "device_id and key)")
    p.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"),
                   help="SQLite synchronous mode (FULL: an acknowledged report survives "
                   "power loss; PostgreSQL: the server's synchronous_commit)")
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
