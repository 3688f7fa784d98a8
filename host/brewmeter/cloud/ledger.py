"""The cloud's ledger: SQLite (WAL). Every report is applied in one transaction, and reports
that arrive together share one commit (`apply_batch`, each inside its own savepoint): a crash
or an error mid-report leaves none of it behind, and a report is durable (synchronous=FULL:
the WAL is fsynced at each commit) before the cloud acknowledges it.

Merging follows the sync model: lifetime counters and usage buckets keep the maximum seen,
events are stored once per (device, id), and only the newest report (highest seq) speaks for
the device's current state (firmware, boot, config); consumables' levels keep, per field, the
newest report's value. The cloud is also the merchant of the device's replenishment orders
(see merchant.py): deduped by (device, order id). Thread-safe: one lock around each call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from brewmeter.cloud.devices import Devices
from brewmeter.cloud.merchant import Merchant
from brewmeter.cloud.merge import Merge
from brewmeter.cloud.owners import Owners
from brewmeter.cloud.queries import Queries
from brewmeter.cloud.records import (  # noqa: F401 - re-exported
    ACK_MAX,
    CONFIG_MAX,
    BadSettings,
    NotForThisDevice,
    Reply,
    SeqConflict,
    StateConflict,
    UnknownDevice,
    UnknownOrder,
    _brews,
    _compact,
    _iso,
    _keys,
    _order,
    _without,
    check_desired,
    day_date,
    day_number,
    is_busy,
)
from brewmeter.cloud.tables import (  # noqa: F401 - re-exported
    ADDED_COLUMNS,
    CYCLE_SCOPED,
    DAY_MS,
    EPOCH,
    MAX_OVERLAP_S,
    ORDER_COLS,
    SCHEMA,
    SEQ_KEEP,
    Keys,
)


class Ledger(Devices, Merge, Queries, Owners):
    """The ledger: its parts are in devices.py, merge.py, queries.py and owners.py."""

    def __init__(self, path: str | Path = ":memory:", *, synchronous: str = "FULL",
                 now: Callable[[], float] = time.time, merchant: Merchant | None = None,
                 busy_timeout_s: float = 1.0) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous: FULL, NORMAL or EXTRA")
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.now = now
        # How long a write waits for a database another process holds, before it gives up
        # (the server then answers 503 with Retry-After: the device tries again later).
        self.busy_timeout_s = busy_timeout_s
        self.merchant = merchant or Merchant()
        self._lock = threading.RLock()
        self._keys: dict[str, Keys] = {}
        self.db = self._open()

