"""The cloud as the merchant of the devices' replenishment orders (coffee, filters, descaler,
cleaning tablets): how a new order is decided and when a placed one ships and arrives. The
ledger stores the orders; this is the policy. Pure: the time is an argument."""

from __future__ import annotations

from dataclasses import dataclass, field

# What the cloud stores; "shipped" and "delivered" follow from a placed order's times, and
# "unknown" is the reply for an order id the cloud never received.
STORED = ("needs_approval", "placed", "declined")
STATUSES = (*STORED, "shipped", "delivered", "unknown")


@dataclass(frozen=True)
class Merchant:
    ship_after_s: float = 86_400  # placed (or approved) -> shipped
    deliver_after_s: float = 172_800  # shipped -> delivered
    out_of_stock: frozenset[str] | set[str] = field(default_factory=frozenset)

    def decide(self, item: str, ask: int) -> str:
        """A new order's status."""
        if item in self.out_of_stock:
            return "declined"
        return "needs_approval" if ask else "placed"

    def schedule(self, placed_at: float) -> tuple[float, float]:
        """(ships at, delivered at) of an order placed at `placed_at`."""
        shipped = placed_at + self.ship_after_s
        return shipped, shipped + self.deliver_after_s


def status(stored: str, ship_at: float | None, deliver_at: float | None, now: float) -> str:
    """An order's status at `now`, from what the ledger stored."""
    if stored != "placed" or ship_at is None or deliver_at is None or now < ship_at:
        return stored
    return "delivered" if now >= deliver_at else "shipped"
