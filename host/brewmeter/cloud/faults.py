"""Fault injection for chaos tests: what goes wrong with each report request."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

FAULT_KINDS = ("drop_before", "drop_after", "delay", "error_500", "error_503", "error_429",
               "truncate", "garbage", "duplicate", "restart")


@dataclass
class Faults:
    """What goes wrong with each report request, deterministically: the scripted `queue`
    first (an entry of None lets one request through), then at random with the probabilities
    in `rates`, drawn from `seed`. Kinds:

    drop_before  close the connection before anything is stored
    drop_after   store (commit), then close the connection without a reply
    delay        sleep `delay_s` (past the device's timeout), then handle normally (stores)
    error_500 / error_503 / error_429   that status with Retry-After, nothing stored
    truncate     store, then send half the reply and close
    garbage      store, then reply 200 with bytes that are not JSON
    duplicate    apply the same report twice, concurrently (as a proxy resending it would)
    restart      close and reopen the ledger (a cloud restart), then handle normally
    """
    seed: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    queue: list[str | None] = field(default_factory=list)
    delay_s: float = 2.0
    retry_after_s: int = 1
    log: list[tuple[str, str | None, str]] = field(default_factory=list)  # device, seq, kind

    def __post_init__(self) -> None:
        self._check(list(self.rates) + self.queue)
        if sum(self.rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        self._rng = random.Random(self.seed)

    @staticmethod
    def _check(kinds: Iterable[str | None]) -> None:
        bad = {k for k in kinds if k is not None and k not in FAULT_KINDS}
        if bad:
            raise ValueError(f"unknown fault kinds {sorted(bad)} (known: {FAULT_KINDS})")

    def script(self, *kinds: str | None) -> Faults:
        """Queue these faults (None: no fault) for the next requests, in order."""
        self._check(kinds)
        self.queue.extend(kinds)
        return self

    def draw(self, device_id: str, seq: str | None) -> str | None:
        x = self._rng.random()  # drawn every time: scripted faults don't shift random ones
        kind = None
        if self.queue:
            kind = self.queue.pop(0)
        else:
            for k in FAULT_KINDS:  # a fixed order, so a seed always means the same faults
                p = self.rates.get(k, 0.0)
                if x < p:
                    kind = k
                    break
                x -= p
        if kind:
            self.log.append((device_id, seq, kind))
        return kind

    def garbage(self) -> bytes:
        return b"\xff<garbage>" + self._rng.randbytes(16)
