"""The protocol's one definition, firmware/app/protocol.py, as the cloud imports it: every
limit, name, format and rule the device and the cloud share comes from there."""

from brewmeter import standins

# firmware/ on sys.path and the `micropython` module protocol.py uses, for these imports only
# (left as they are when the process already installed them): the cloud patches nothing.
with standins.installed():
    from app import protocol
    from app.supplies import ITEMS  # the consumables: what the merchant sells

__all__ = ["ITEMS", "protocol"]
