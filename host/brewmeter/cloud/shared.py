"""The protocol's one definition, firmware/app/protocol.py, as the cloud imports it: every
limit, name, format and rule the device and the cloud share comes from there."""

from brewmeter import standins

standins.install()  # firmware/ on sys.path, and the `micropython` module protocol.py uses

from app import protocol  # noqa: E402
from app.supplies import ITEMS  # noqa: E402 - the consumables: what the merchant sells

__all__ = ["ITEMS", "protocol"]
