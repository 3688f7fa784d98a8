"""The audit log: every change, from a page of the web console or the JSON API, with who
(operator, owner:NAME), what and when. A service over the ledger's database."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from brewmeter.cloud.db import Conn, Database


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def write(c: Conn, at: float, who: str, device_id: str | None, action: str,
          detail: str) -> None:
    """One change into the log, within the transaction that made it."""
    c.execute("INSERT INTO audit (at, who, device, action, detail) VALUES (?, ?, ?, ?, ?)",
              (at, who, device_id, action, detail))


class Audit:
    def __init__(self, db: Database, now: Callable[[], float] = time.time) -> None:
        self.db, self.now = db, now

    def audit(self, who: str, device_id: str | None, action: str, detail: str) -> None:
        """Write one change to the audit log, at the ledger's time."""
        with self.db.tx() as c:
            write(c, self.now(), who, device_id, action, detail)

    def audit_log(self, device_id: str | None, limit: int = 100) -> list[dict[str, Any]]:
        """The device's changes, newest first (None: the owners' tokens, of no device)."""
        which = "device IS NULL" if device_id is None else "device=?"
        with self.db.read() as c:
            rows = c.execute(f"SELECT id, at, who, action, detail FROM audit WHERE {which} "
                             "ORDER BY id DESC LIMIT ?",
                             (limit,) if device_id is None else (device_id, limit)).fetchall()
        return [{"id": i, "at": _iso(t), "who": w, "action": a, "detail": d}
                for i, t, w, a, d in rows]
