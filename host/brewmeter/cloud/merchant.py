"""The cloud as the merchant of the devices' replenishment orders (coffee, filters, descaler,
cleaning tablets): how a new order is decided and when a placed one ships and arrives. The
ledger stores the orders; this is the policy. Pure: the time is an argument."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from brewmeter.cloud.shared import ITEMS
from brewmeter.cloud.shared import protocol as P

# What the cloud stores; "shipped" and "delivered" follow from a placed order's times, and
# "unknown" is the reply for an order id the cloud never received.
STORED = ("needs_approval", "placed", "declined")
STATUSES = (*(s for s in P.STATUSES if s != "requested"), P.UNKNOWN)  # what replies say
# What the merchant sells: the device's consumables.
CATALOGUE = frozenset(ITEMS)


@dataclass(frozen=True, slots=True)
class Rules:
    """The owner's rules for orders, from the desired settings the owner set (the device's
    own copy may be older, or not what the owner said): protocol defaults where unset."""
    ask_first: int
    orders_month: int
    auto: frozenset[str]  # items the device may order by itself

    @classmethod
    def of(cls, settings: dict[str, Any]) -> Rules:
        return cls(P.setting(settings, "ask_first"), P.setting(settings, "orders_month"),
                   frozenset(i for i in CATALOGUE if P.setting(settings, "auto_" + i)))


@dataclass(frozen=True)
class Merchant:
    ship_after_s: float = 86_400  # placed (or approved) -> shipped
    deliver_after_s: float = 172_800  # shipped -> delivered
    out_of_stock: frozenset[str] | set[str] = field(default_factory=frozenset)
    catalogue: frozenset[str] = CATALOGUE

    def decide(self, order: str, item: str, cycle: int, ask: int, rules: Rules,
               current: int | None, this_month: int) -> tuple[str, str | None]:
        """A new order's (status, reason it was declined): order id `order` for `cycle` of
        `item`, the device asking for approval or not (`ask`), under the owner's `rules`,
        the item's `current` cycle as the device reported it (None: never), `this_month`
        orders not declined so far this calendar month."""
        if order != P.order_id(item, cycle):  # one order per item and cycle: the id says which
            return "declined", f"{order} is not the order id of {item}'s cycle {cycle}"
        if item not in self.catalogue:
            return "declined", f"{item!r} is not in the catalogue"
        if current is None:
            return "declined", f"the device has reported no cycle of {item}"
        if cycle != current:
            return "declined", f"cycle {cycle} is not {item}'s current cycle ({current})"
        if item not in rules.auto:
            return "declined", f"the owner orders {item} by hand (auto_{item}=0)"
        if this_month >= rules.orders_month:
            return "declined", f"the owner's cap of {rules.orders_month} orders a month"
        if item in self.out_of_stock:
            return "declined", f"{item} is out of stock"
        return ("needs_approval" if ask or rules.ask_first else "placed"), None

    def schedule(self, placed_at: float) -> tuple[float, float]:
        """(ships at, delivered at) of an order placed at `placed_at`."""
        shipped = placed_at + self.ship_after_s
        return shipped, shipped + self.deliver_after_s


def status(stored: str, ship_at: float | None, deliver_at: float | None, now: float) -> str:
    """An order's status at `now`, from what the ledger stored."""
    if stored != "placed" or ship_at is None or deliver_at is None or now < ship_at:
        return stored
    return "delivered" if now >= deliver_at else "shipped"
