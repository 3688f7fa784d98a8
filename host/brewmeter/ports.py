"""Opening the device's USB serial port with one clear error per failure, for flash.sh and
the field techs' commands."""

from __future__ import annotations

import errno
import os

import serial
from serial.tools import list_ports

# USB-serial bridges on ESP32 boards: Silicon Labs CP210x, WCH CH340/CH9102, FTDI, and the
# ESP32-S3's own USB (Espressif).
ESP32_USB_VIDS = {0x10C4, 0x1A86, 0x0403, 0x303A}


class PortError(Exception):
    """Why the port cannot be used, in words a user can act on."""


def open_port(port: str, baudrate: int = 115200, timeout: float = 1.0) -> serial.Serial:
    if not os.path.exists(port):
        raise PortError(f"{port}: no such port (is the board plugged in? see `brewmeter ports`)")
    try:
        return serial.Serial(port, baudrate, timeout=timeout, exclusive=True)
    except serial.SerialException as e:
        err = getattr(e, "errno", None)
        text = str(e)
        if err == errno.EACCES or "Permission denied" in text:
            raise PortError(
                f"{port}: permission denied. On Linux add yourself to the group that owns it "
                f"(usually: sudo usermod -aG dialout $USER, then log in again)") from e
        if err in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text or "busy" in text:
            raise PortError(f"{port}: port busy: another program (a terminal, mpremote?) has "
                            f"it open; close it and try again") from e
        raise PortError(f"{port}: cannot open: {text}") from e


def describe(found: list) -> str:
    """`brewmeter ports`: every serial port (pyserial's ListPortInfo), its USB ids and what
    it is, ESP32 adapters marked."""
    if not found:
        return ("no serial ports found: plug the board in (a data cable, not a charging-only "
                "one); an emulated board's port is printed by `./brewmeter emulate`")
    rows = []
    for p in sorted(found, key=lambda p: p.device):
        ids = f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None else "-"
        mark = "ESP32 adapter" if p.vid in ESP32_USB_VIDS else ""
        what = " ".join(x for x in (p.manufacturer, p.description) if x and x != "n/a")
        rows.append(f"{p.device:<16} {ids:<10} {mark:<14} {what}".rstrip())
    return "\n".join(rows)


def candidates() -> list[str]:
    """Serial ports that look like an ESP32 board's USB adapter."""
    return sorted(p.device for p in list_ports.comports() if p.vid in ESP32_USB_VIDS)


def pick(port: str | None) -> str:
    """`port`, or the only ESP32 adapter plugged in; otherwise say which ones there are."""
    if port:
        return port
    found = candidates()
    if len(found) == 1:
        return found[0]
    if not found:
        raise PortError("no ESP32 USB serial adapter found: plug the board in, or give --port")
    raise PortError("several ESP32 adapters: give --port, one of " + ", ".join(found))
