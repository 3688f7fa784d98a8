"""Cloud throughput: signed reports per second that the emulated cloud accepts (each durable
before its 200: SQLite WAL with synchronous=FULL). The server runs in a subprocess on a file
ledger, plain HTTP on 127.0.0.1; this process drives it with aiohttp (keep-alive, a bounded
number of requests in flight), from many devices at once."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from brewmeter.cloud import auth

START_TIMEOUT_S = 20


def _report(seq: int, n: int, day: int) -> dict[str, Any]:
    """The n-th report of a device: a plausible body (~700 bytes), an event every tenth."""
    esp, lungo = 3 * n, n
    return {
        "seq": seq, "fw": "0.1.0", "boot": 5, "uptime_ms": 60_000 * n,
        "clock": day * 86400 + 36_000 + 60 * n,
        "counters": {"brews": {"espresso": esp, "lungo": lungo}, "brews_total": esp + lungo,
                     "rinses": n, "stuck_runs": 0, "water_ml": 40 * esp + 110 * lungo,
                     "idle_ml": 0, "pump_ms": 25_000 * (esp + lungo), "filters": 1,
                     "filter_ml": 40 * esp, "filter_pump_ms": 25_000 * esp,
                     "filter_brews": esp, "boots": 5},
        "days": [{"day": day - 1, "brews": {"espresso": 30}, "water_ml": 1200},
                 {"day": day, "brews": {"espresso": esp, "lungo": lungo},
                  "water_ml": 40 * esp + 110 * lungo}],
        "events": [{"id": n // 10, "kind": "service", "at": n}] if n % 10 == 0 else [],
        "config": {"applied": 0},
    }


async def _drive(url: str, token: str, devices: int, reports: int,
                 concurrency: int) -> float:
    keys = {f"bm-bench{i:04d}": auth.new_key() for i in range(devices)}
    day = int(time.time() // 86400)
    # Signed up front: the figure is the cloud's, not this client's HMAC and JSON.
    work = [auth.signed_report(dev, key, _report(n, n, day))
            for n in range(1, reports // devices + 1) for dev, key in keys.items()]
    admin = {"Authorization": f"Bearer {token}"}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=conn) as s:
        for dev, key in keys.items():
            async with s.put(f"/v1/admin/devices/{dev}", json={"key": key},
                             headers=admin) as r:
                r.raise_for_status()
        it = iter(work)

        async def client() -> int:
            done = 0
            for path, body, headers in it:  # one shared iterator: work is handed out in order
                async with s.post(path, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"report refused: {r.status} {await r.text()}")
                done += 1
            return done

        t0 = time.perf_counter()
        done = sum(await asyncio.gather(*(client() for _ in range(concurrency))))
        elapsed = time.perf_counter() - t0
    return done / elapsed


def cloud_reports_per_s(devices: int = 50, reports: int = 5000, concurrency: int = 32,
                        db: str | None = None, workers: int = 1) -> dict[str, float]:
    """The rate, on a SQLite file (`db` None) or the database at `db` (a PostgreSQL URL),
    served by `workers` processes."""
    token = secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [sys.executable, "-m", "brewmeter.cloud", "--port", "0", "--db",
             db or str(Path(d) / "ledger.db"), "--workers", str(workers)],
            stdout=subprocess.PIPE, text=True,
            env={**os.environ, "BREWMETER_ADMIN_TOKEN": token})
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the URL line, once it listens
            m = re.search(r"https?://\S+", line)
            if not m:
                raise RuntimeError(f"the cloud did not start: {line!r}")
            rate = asyncio.run(_drive(m.group(0), token, devices, reports, concurrency))
        finally:
            proc.terminate()
            try:
                proc.wait(START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"cloud_reports_per_s": round(rate, 1)}


def on_postgresql(workers: tuple[int, ...] = (1, 2)) -> dict[str, float]:
    """The same on PostgreSQL (a cluster of its own from the machine's packages, fsync on as
    SQLite's FULL: each commit durable), served by each number of `workers`:
    cloud_reports_per_s_postgresql_N_workers. Nothing where PostgreSQL is not installed."""
    import psycopg

    from brewmeter.cloud import pgserver

    if pgserver.why_missing() is not None:
        return {}
    pg = pgserver.TempPostgres().start()
    try:
        with psycopg.connect(pg.url, autocommit=True) as c:  # (the tests' cluster has it off)
            c.execute("ALTER SYSTEM SET fsync = on")
            c.execute("SELECT pg_reload_conf()")
        return {f"cloud_reports_per_s_postgresql_{n}_worker{'s' * (n > 1)}":
                cloud_reports_per_s(db=pg.new_schema(), workers=n)["cloud_reports_per_s"]
                for n in workers}
    finally:
        pg.stop()


if __name__ == "__main__":
    print(cloud_reports_per_s())
