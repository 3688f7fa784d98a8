"""A throwaway PostgreSQL server from the machine's own packages (Debian's `postgresql`:
initdb and pg_ctl under /usr/lib/postgresql/VERSION/bin): a cluster in a temporary folder,
owned by an unprivileged user when we are root (PostgreSQL refuses to run as root), on a
free port of 127.0.0.1 only (no Unix socket), trusting local connections, removed when
stopped. For the tests and the benchmarks: `brewmeter cloud --db` takes its URLs.

    with TempPostgres() as pg:
        url = pg.new_schema()   # a schema of its own: one cluster serves many ledgers

`find_bin()` is None where PostgreSQL is not installed (`why_missing()` says so in a line)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SEARCH = "/usr/lib/postgresql"
USER = "postgres"  # the cluster's superuser (trust authentication, 127.0.0.1 only)
RUN_AS = ("nobody", "nogroup")  # who runs the server when we are root


def find_bin() -> Path | None:
    """The folder of initdb and pg_ctl: the newest under /usr/lib/postgresql, else PATH's."""
    found = sorted(Path(SEARCH).glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None


def why_missing() -> str | None:
    """None if a PostgreSQL server can be started here; else why not, in one line."""
    if find_bin() is None:
        return (f"PostgreSQL is not installed (no initdb under {SEARCH}/*/bin or on PATH: "
                "apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    def __init__(self) -> None:
        self.dir: Path | None = None
        self.port = 0
        self._schemas = 0
        self._as: dict[str, Any] = {}

    def _run(self, *args: str | Path) -> None:
        r = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                           cwd=self.dir, **self._as)
        if r.returncode != 0:
            log = self.dir / "log" if self.dir else None
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{Path(str(args[0])).name} failed ({r.returncode}): "
                               f"{r.stderr.strip() or r.stdout.strip()}\n{tail}")

    def start(self) -> TempPostgres:
        bindir = find_bin()
        if bindir is None:
            raise RuntimeError(why_missing())
        self.dir = Path(tempfile.mkdtemp(prefix="brewmeter-pg-"))
        if os.geteuid() == 0:
            user, group = RUN_AS
            ent = pwd.getpwnam(user)
            os.chown(self.dir, ent.pw_uid, ent.pw_gid)
            self._as = {"user": user, "group": group, "extra_groups": []}
        data = self.dir / "data"
        self._run(bindir / "initdb", "-D", data, "-U", USER, "--auth=trust", "--no-sync",
                  "--locale=C", "--encoding=UTF8")
        for attempt in range(3):  # a free port may be taken between choosing and binding
            self.port = _free_port()
            try:
                # fsync off: a test's cluster need not survive a power cut (the cloud's
                # durability is the server's setting, not this code's).
                self._run(bindir / "pg_ctl", "-D", data, "-l", self.dir / "log", "-w",
                          "-t", "60", "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} "
                          "-c unix_socket_directories='' -c fsync=off "
                          "-c max_connections=300", "start")
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        return self

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def new_schema(self) -> str:
        """A URL whose tables live in a schema of their own, new and empty."""
        import psycopg

        self._schemas += 1
        name = f"t{os.getpid()}_{self._schemas}"
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {name}")
        return f"{self.url}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        if self.dir is None:
            return
        bindir = find_bin()
        with contextlib.suppress(RuntimeError):
            if bindir is not None and (self.dir / "data" / "postmaster.pid").exists():
                self._run(bindir / "pg_ctl", "-D", self.dir / "data", "-m", "immediate",
                          "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
