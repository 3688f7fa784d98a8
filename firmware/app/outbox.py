# Discrete events (filter changed, order requested, fault, service action) waiting for the
# cloud to acknowledge them. Each has an id unique to this device for life (the counter is
# saved in the same file as the event), so the cloud can dedupe retries. Bounded: see `add`.
import json

from micropython import const

MAX_EVENTS = const(16)

# When full, the least important event makes room, the oldest first: faults before service
# actions before events that bill or order. Kinds not listed count as faults.
PRIORITY = {"filter_changed": 2, "order_requested": 2, "descaled": 2, "service": 1}


def _prio(ev):
    return PRIORITY.get(ev["kind"], 0)


class Outbox:
    def __init__(self, store):
        self.store = store
        self.events = []
        self.next_id = 1
        self.dropped = 0  # events that found no room, for the console and the cloud
        data = store.read("outbox")
        if data:
            try:
                d = json.loads(data)
                self.events, self.next_id, self.dropped = d["ev"], d["next"], d["dropped"]
            except (ValueError, KeyError, TypeError):
                pass  # CRC-good but unreadable: only a newer firmware could have written it

    def _save(self):
        self.store.write("outbox", json.dumps(
            {"ev": self.events, "next": self.next_id, "dropped": self.dropped},
            separators=(",", ":")).encode())  # compact: boot reads this file

    def add(self, event):
        """Give `event` (a dict with "kind") the next id, keep it, save. If the outbox is
        full, the oldest event of the lowest priority, counting the new one, is dropped.
        Returns the id. Raises OSError if the flash refuses (the event stays in RAM)."""
        event["id"] = self.next_id
        self.next_id += 1
        self.events.append(event)
        if len(self.events) > MAX_EVENTS:
            lowest = min(_prio(e) for e in self.events)
            for e in self.events:
                if _prio(e) == lowest:
                    self.events.remove(e)
                    break
            self.dropped += 1
        self._save()
        return event["id"]

    def ack(self, ids):
        """The cloud has these ids: forget them."""
        n = len(self.events)
        self.events = [e for e in self.events if e["id"] not in ids]
        if len(self.events) != n:
            self._save()
