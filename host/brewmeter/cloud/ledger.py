"""The cloud's ledger: one database (db.py: SQLite, the embedded default, or PostgreSQL)
and the services that take it: devices.py (provisioning, keys, config, plans), merge.py
(applying reports), invoicing.py (months that close, invoices), orders.py (the owner's
approvals and refills), owners.py (owners, tokens, assignments, rules), audit.py (the
audit log), queries.py (what the query API reads). `Ledger` holds them together and names
their functions, as the JSON API, the web console and the tests call them.

Every report is applied in one transaction, and reports that arrive together share one
commit (`apply_batch`, each inside its own savepoint): a crash or an error mid-report
leaves none of it behind, and a report is durable (SQLite synchronous=FULL: the WAL is
fsynced at each commit; PostgreSQL: synchronous_commit) before the cloud acknowledges it.

Merging follows the sync model: lifetime counters and usage buckets keep the maximum seen,
events are stored once per (device, id), and only the newest report (highest seq) speaks for
the device's current state (firmware, boot, config); consumables' levels keep, per field, the
newest report's value. The cloud is also the merchant of the device's replenishment orders
(see merchant.py): deduped by (device, order id). Thread-safe: the database serializes the
use of its connection."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from brewmeter.cloud.audit import Audit
from brewmeter.cloud.db import Database, is_busy  # noqa: F401 - re-exported
from brewmeter.cloud.devices import Devices
from brewmeter.cloud.errors import (  # noqa: F401 - re-exported
    BadSettings,
    NotForThisDevice,
    Refused,
    SeqConflict,
    StateConflict,
    UnknownDevice,
    UnknownOrder,
    UnknownOwner,
)
from brewmeter.cloud.invoicing import Billing
from brewmeter.cloud.merchant import Merchant
from brewmeter.cloud.merge import Merge
from brewmeter.cloud.migrations import open_database
from brewmeter.cloud.orders import Orders
from brewmeter.cloud.owners import Owners
from brewmeter.cloud.queries import Queries
from brewmeter.cloud.records import (  # noqa: F401 - re-exported
    ACK_MAX,
    CONFIG_MAX,
    Reply,
    _compact,
    check_desired,
    day_date,
    day_number,
)
from brewmeter.cloud.releases import Releases
from brewmeter.cloud.tables import (  # noqa: F401 - re-exported
    DAY_MS,
    EPOCH,
    MAX_OVERLAP_S,
    SEQ_KEEP,
    Keys,
)


class Ledger:
    """The services over one database. `db`: a SQLite file, ":memory:", a postgresql:// URL,
    or a Database already open (the Ledger then closes it with itself). `merge`: how reports
    are applied (a test's backend broken on purpose subclasses Merge)."""

    def __init__(self, path: str | Path | Database = ":memory:", *, synchronous: str = "FULL",
                 now: Callable[[], float] = time.time, merchant: Merchant | None = None,
                 busy_timeout_s: float = 1.0, merge: type[Merge] = Merge) -> None:
        self.db = path if isinstance(path, Database) else open_database(
            path, synchronous=synchronous, busy_timeout_s=busy_timeout_s)
        self.path = self.db.where
        self.now = now
        self.merchant = merchant or Merchant()
        self.devices = Devices(self.db, now)
        self.merging = merge(self.db, now, self.merchant)
        self.billing = Billing(self.db, now)
        self.ordering = Orders(self.db, now, self.merchant)
        self.ownership = Owners(self.db, self.devices, now)
        self.auditing = Audit(self.db, now)
        self.queries = Queries(self.db, self.devices, now)
        self.releasing = Releases(self.db, now)  # releases, rollouts, update states
        # What the API, the console and the tests call, service by service.
        self.add_device = self.devices.add_device
        self.device_key = self.devices.device_key
        self.signing_keys = self.devices.signing_keys
        self.set_config = self.devices.set_config
        self.set_plan = self.devices.set_plan
        self.apply_report = self.merging.apply_report
        self.apply_batch = self.merging.apply_batch
        self.invoice = self.billing.invoice
        self.approve = self.ordering.approve
        self.refill = self.ordering.refill
        self.add_owner = self.ownership.add_owner
        self.revoke_owner = self.ownership.revoke_owner
        self.owner_of_token = self.ownership.owner_of_token
        self.owner_of_token_hash = self.ownership.owner_of_token_hash
        self.owners = self.ownership.owners
        self.owner_of = self.ownership.owner_of
        self.assign = self.ownership.assign
        self.device_ids = self.ownership.device_ids
        self.rules = self.ownership.rules
        self.set_rules = self.ownership.set_rules
        self.audit = self.auditing.audit
        self.audit_log = self.auditing.audit_log
        self.device = self.queries.device
        self.days = self.queries.days
        self.events = self.queries.events
        self.orders = self.queries.orders
        self.recent_events = self.queries.recent_events
        self.fault_count = self.queries.fault_count
        self.stats = self.queries.stats
        self.dump = self.db.dump

    def close(self) -> None:
        self.db.close()

    def reopen(self) -> None:
        """Close and open the database again, as a cloud restart would."""
        self.db.reopen()
        self.devices.load()
        self.ownership.load()
