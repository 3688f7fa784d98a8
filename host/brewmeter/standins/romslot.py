"""A CPython stand-in for the firmware's `romslot` (the ROM slots' bootstrap module) in the
update tests: a staging partition over a bytearray with esp32.Partition's block protocol,
and the switch, trial and report calls recorded. Installed by a test as sys.modules
["romslot"]; never on the device (the emulated board runs the real one)."""

from __future__ import annotations

from typing import Any

BLOCK = 4096


class Partition:
    """esp32.Partition's block protocol over RAM: writeblocks erases (0xFF) first."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(b"\xff" * size)
        self.writes: list[int] = []  # block numbers, in the order written

    def readblocks(self, n: int, buf: Any, offset: int = 0) -> None:
        at = n * BLOCK + offset
        buf[:] = self.data[at:at + len(buf)]

    def writeblocks(self, n: int, buf: Any) -> None:
        self.writes.append(n)
        self.data[n * BLOCK:(n + 1) * BLOCK] = b"\xff" * BLOCK
        self.data[n * BLOCK:n * BLOCK + len(buf)] = bytes(buf)

    def ioctl(self, op: int, arg: int) -> int:
        return {4: len(self.data) // BLOCK, 5: BLOCK}[op]


class Slots:
    """The module's functions: staging(), switch(rec), status(), passed(), reported()."""

    def __init__(self, size: int = 128 * 1024) -> None:
        self.slot: Partition | None = Partition(size) if size else None
        self.switched: dict | None = None
        self.state: dict | None = None  # what status() says (a test sets it after a "reboot")
        self.calls: list[str] = []

    def staging(self) -> Partition | None:
        return self.slot

    def switch(self, rec: dict) -> None:
        self.calls.append("switch")
        self.switched = dict(rec)

    def status(self) -> dict | None:
        return self.state

    def passed(self) -> dict | None:
        self.calls.append("passed")
        if self.state and self.state["state"] == "trial":
            self.state = dict(self.state, state="done")
        return self.state

    def reported(self) -> None:
        self.calls.append("reported")
