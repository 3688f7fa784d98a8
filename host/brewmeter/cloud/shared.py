"""The protocol's one definition, firmware/app/protocol.py, as the cloud imports it: every
limit, name, format and rule the device and the cloud share comes from there. The rules only
the host checks live here, not in the firmware (the device would hold their code on its heap
without running it)."""

import re

from brewmeter import standins

# firmware/ on sys.path and the `micropython` module protocol.py uses, for these imports only
# (left as they are when the process already installed them): the cloud patches nothing.
with standins.installed():
    from app import protocol
    from app.supplies import ITEMS  # the consumables: what the merchant sells

__all__ = ["ITEMS", "is_device_id", "parse_order", "protocol"]

# An order id, protocol.order_id(item, cycle): ASCII only (str.isdigit would take "²").
_ORDER = re.compile(rf"([a-z]{{1,{protocol.MAX_NAME}}})-([0-9]{{1,15}})")


def parse_order(s: object) -> tuple[str, int] | None:
    """(item, cycle) of order id `s` ("[a-z]{1,32}-[0-9]{1,15}"), or None."""
    m = _ORDER.fullmatch(s) if isinstance(s, str) else None
    return None if m is None else (m[1], int(m[2]))


def is_device_id(s: object) -> bool:
    """3..MAX_NAME of NAME_CHARS, a letter or digit first: it goes into URL paths, the signed
    message and file names (a visit report's), so never "/", "." or a leading "-"."""
    return protocol.is_name(s) and len(s) > 2 and s[0] not in "-_"  # type: ignore[arg-type]
