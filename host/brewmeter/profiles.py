"""Board profiles for host code, checked by the firmware's own validator (app/profile.py).
Importing this installs nothing: the firmware's modules load only once the stand-ins are
installed (`brewmeter.standins.install()`, as the `brewmeter` command and flash.sh do at
start and the tests for their session). Profile, ProfileError, parse and validate are the
firmware's, looked up when first asked for."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brewmeter import standins

if TYPE_CHECKING:
    from app.profile import Profile, ProfileError, parse, validate  # noqa: F401

_FIRMWARE_NAMES = ("Profile", "ProfileError", "parse", "validate")


def __getattr__(name: str) -> Any:
    if name in _FIRMWARE_NAMES:
        return getattr(firmware("profile"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def firmware(name: str) -> Any:
    """The firmware's module app.NAME, as host code reaches it: only with the stand-ins
    installed (else a clear error, rather than patching the process behind its back)."""
    if not standins.is_installed():
        raise RuntimeError(f"app.{name} needs the MicroPython stand-ins: call "
                           f"brewmeter.standins.install() (or use standins.installed()) first")
    import importlib

    return importlib.import_module("app." + name)


BOARDS = standins.REPO / "boards"


def board_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".json" or p.is_file():  # boards/BREWMETER_ESP32/ is no profile
        return p
    return BOARDS / f"{name_or_path}.json"


def load_profile(name_or_path: str) -> Profile:
    """Load and validate a board profile by name (boards/NAME.json) or path."""
    profile = firmware("profile")
    p = board_path(name_or_path)
    try:
        text = p.read_text()
    except OSError as e:
        known = ", ".join(sorted(x.stem for x in BOARDS.glob("*.json")))
        raise profile.ProfileError(
            str(p), "(file)", f"cannot read: {e.strerror} (boards: {known})"
        ) from None
    if '"service_pin"' in text:
        print(f"{p}: field 'service_pin' is now named 'button_pin' (the refill button's GPIO; "
              f"the provisioning's service_pin is the PIN): accepted, please rename it",
              file=sys.stderr)
    return profile.parse(text, str(p))

