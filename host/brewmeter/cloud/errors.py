"""Refused: the one error a service raises when it will not do what was asked, with the HTTP
status and answer it maps to. The JSON API answers it as {"error": answer, ...extra}, the
web console as an error page; Python callers catch the kind they expect (UnknownDevice,
StateConflict, ...). Anything else a service raises is a bug or the database (see
db.is_busy): a 500, or a 503 to try later."""

from __future__ import annotations

from typing import Any

from brewmeter.cloud.tables import SEQ_KEEP


class Refused(Exception):
    """Not done, nothing changed: `status` (HTTP), `answer` (what the reply says), `extra`
    (more keys of the JSON reply)."""

    status = 400

    def __init__(self, status: int | None = None, answer: str = "", **extra: Any) -> None:
        super().__init__(answer)
        if status is not None:
            self.status = status
        self.extra = extra

    @property
    def answer(self) -> str:
        return str(self)


class Unknown(Refused, LookupError):
    """No such `what` (HTTP 404); the exception's text is the name asked for."""

    status = 404
    what = "thing"

    def __init__(self, name: str | None) -> None:
        super().__init__(None, str(name))

    @property
    def answer(self) -> str:
        return f"unknown {self.what}"


class UnknownDevice(Unknown):
    """No such device (the JSON API: 404; a report: 401, as for a bad signature)."""

    what = "device"


class UnknownOrder(Unknown):
    what = "order"


class UnknownOwner(Unknown):
    what = "owner"


class StateConflict(Refused):
    """The request does not fit the order's or the item's state (HTTP 409)."""

    status = 409

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class SeqConflict(Refused):
    """A seq already accepted with a different body, or one so far below the highest that
    its hash is pruned (HTTP 409): the reply's `seq` is the highest accepted."""

    status = 409

    def __init__(self, seq: int, highest: int, pruned: bool = False) -> None:
        super().__init__(
            None, f"seq {seq} is more than {SEQ_KEEP} below the highest accepted ({highest}): "
            "continue above it" if pruned else
            f"seq {seq} was already accepted with a different body", seq=highest)
        self.seq, self.highest = seq, highest


class BadSettings(Refused, ValueError):
    """Desired settings no device would take, or one could not receive (HTTP 400)."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)

    @property
    def answer(self) -> str:
        return f"the device would refuse these settings: {self}"


class NotForThisDevice(BadSettings):
    """Desired settings valid for some device but not this one: a per-kind setting naming
    a brew kind it does not have (HTTP 409)."""

    status = 409


class BadValue(Refused, ValueError):
    """A value the service cannot take (a bad key, name or rule): HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)
