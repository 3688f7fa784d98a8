# Discrete events (filter changed, order requested, fault, service action) waiting for the
# cloud to acknowledge them. Each has an id unique to this device for life (the next id is
# saved with the events), so the cloud can dedupe retries. Bounded: see `add`. Kept in RAM;
# app.device saves it with the rest of the device state.
from micropython import const

MAX_EVENTS = const(16)

# When full, the least important event makes room, the oldest first: faults before service
# actions before events that bill or order. Kinds not listed count as faults.
PRIORITY = {"filter_changed": 2, "order_requested": 2, "descaled": 2, "service": 1}


def _prio(ev):
    return PRIORITY.get(ev["kind"], 0)


class Outbox:
    def __init__(self, saved=None):
        """`saved` is what state() returned before a reboot."""
        self.events = []
        self.next_id = 1
        self.dropped = 0  # events that found no room, for the console and the cloud
        if saved:
            try:
                self.events, self.next_id, self.dropped = (
                    saved["ev"], saved["next"], saved["dropped"])
            except (KeyError, TypeError):
                pass

    def state(self):
        return {"ev": self.events, "next": self.next_id, "dropped": self.dropped}

    def add(self, event):
        """Give `event` (a dict with "kind") the next id and keep it. If the outbox is full,
        the oldest event of the lowest priority, counting the new one, is dropped. Returns
        the id."""
        event["id"] = self.next_id
        self.next_id += 1
        self.events.append(event)
        if len(self.events) > MAX_EVENTS:
            lowest = 99  # (loops, not comprehensions: each of those is code held on the heap)
            for e in self.events:
                lowest = min(lowest, _prio(e))
            for e in self.events:
                if _prio(e) == lowest:
                    self.events.remove(e)
                    break
            self.dropped += 1
        return event["id"]

    def ack(self, ids):
        """The cloud has these ids: forget them. True if anything changed."""
        n = len(self.events)
        keep = []
        for e in self.events:
            if e["id"] not in ids:
                keep.append(e)
        self.events = keep
        return len(keep) != n
