# brewmeter firmware: the app package. Same source on the ESP32, the MicroPython unix port
# and CPython (under the host harness).
VERSION = "0.1.0"


def unload(name):
    """Drop module app.NAME, so its heap is freed (once nothing else holds it)."""
    import sys

    sys.modules.pop("app." + name, None)
    globals().pop(name, None)
