"""The owner's side of orders and supplies: approving or declining an order that waits, and
saying a consumable was refilled. A service over the ledger's database (the merchant's
policy: merchant.py; new orders arrive with reports: merge.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from brewmeter.cloud.db import Database
from brewmeter.cloud.devices import need
from brewmeter.cloud.errors import StateConflict, UnknownOrder
from brewmeter.cloud.merchant import Merchant
from brewmeter.cloud.records import _order
from brewmeter.cloud.tables import ORDER_COLS


class Orders:
    def __init__(self, db: Database, now: Callable[[], float] = time.time,
                 merchant: Merchant | None = None) -> None:
        self.db, self.now, self.merchant = db, now, merchant or Merchant()

    def approve(self, device_id: str, order: str, yes: bool) -> dict[str, Any]:
        """The owner approves (yes) or declines an order that needs approval. Returns the order
        (as in orders()). Raises UnknownDevice, UnknownOrder, or StateConflict if the order
        is not waiting for approval (decided once: the device's row is locked first)."""
        now = self.now()
        with self.db.tx() as db:
            need(self.db, db, device_id)
            row = db.execute("SELECT status FROM orders WHERE device=? AND id=?",
                             (device_id, order)).fetchone()
            if row is None:
                raise UnknownOrder(order)
            if row[0] != "needs_approval":
                raise StateConflict(f"order {order} is {row[0]}, not needs_approval")
            if yes:
                db.execute("UPDATE orders SET status='placed', placed_at=?, ship_at=?, "
                           "deliver_at=? WHERE device=? AND id=?",
                           (now, *self.merchant.schedule(now), device_id, order))
            else:
                db.execute("UPDATE orders SET status='declined', declined_at=? "
                           "WHERE device=? AND id=?", (now, device_id, order))
            row = db.execute(f"SELECT {ORDER_COLS} FROM orders WHERE device=? AND id=?",
                             (device_id, order)).fetchone()
        return _order(row, now)

    def refill(self, device_id: str, item: str) -> dict[str, Any]:
        """The owner says `item` was refilled (a new pack, a new filter) during the cycle the
        device last reported: replies carry {item: cycle} until the device reports a later
        cycle. Returns {item, cycle}. Raises UnknownDevice, or StateConflict if no report
        has shown that item's cycle."""
        with self.db.tx() as db:
            need(self.db, db, device_id)
            row = db.execute("SELECT value FROM supplies WHERE device=? AND item=? "
                             "AND field='cycle'", (device_id, item)).fetchone()
            if row is None:
                raise StateConflict(f"the device has not reported a cycle of {item!r}")
            db.execute("INSERT INTO refills (device, item, cycle, at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (device, item) DO UPDATE "
                       "SET cycle=excluded.cycle, at=excluded.at",
                       (device_id, item, row[0], self.now()))
        return {"item": item, "cycle": row[0]}
