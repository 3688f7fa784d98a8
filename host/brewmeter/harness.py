"""Entry point for host code that runs firmware modules under CPython: installs the
stand-ins first, so `import app...` afterwards gets the device's own source."""

from __future__ import annotations

import sys
from pathlib import Path

from brewmeter import standins

standins.install()

from app.profile import Profile, ProfileError, parse, validate  # noqa: E402, F401

REPO = standins.REPO
BOARDS = REPO / "boards"


def board_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".json" or p.is_file():  # boards/BREWMETER_ESP32/ is no profile
        return p
    return BOARDS / f"{name_or_path}.json"


def load_profile(name_or_path: str) -> Profile:
    """Load and validate a board profile by name (boards/NAME.json) or path."""
    p = board_path(name_or_path)
    try:
        text = p.read_text()
    except OSError as e:
        known = ", ".join(sorted(x.stem for x in BOARDS.glob("*.json")))
        raise ProfileError(
            str(p), "(file)", f"cannot read: {e.strerror} (boards: {known})"
        ) from None
    if '"service_pin"' in text:
        print(f"{p}: field 'service_pin' is now named 'button_pin' (the refill button's GPIO; "
              f"the provisioning's service_pin is the PIN): accepted, please rename it",
              file=sys.stderr)
    return parse(text, str(p))

