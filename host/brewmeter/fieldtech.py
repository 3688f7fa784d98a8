"""The field techs' commands: read a machine's counters, status and filter over its USB
serial port (pyserial), open an interactive console, and file a visit report."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import serial

from brewmeter import ports
from brewmeter.cloud.auth import DEVICE_ID_RULE
from brewmeter.cloud.shared import is_device_id


class NoBrewmeter(ports.PortError):
    pass


def _exchange(port: str, asked: bytes, timeout: float,
              answer: Callable[[bytes], Any], silent: str, secret: str = "") -> Any:
    """Type `asked` on the service console and give each whole line after its echo (prompt
    stripped) to `answer` until it returns something; `error: ...` lines raise NoBrewmeter.
    Nothing in `timeout`: NoBrewmeter saying why (the REPL, silence, or `silent`). No error
    quotes `secret` (the PIN in `asked`) or the echo of `asked`, whatever the port sends."""

    def said(b: bytes) -> str:
        text = b.decode(errors="replace")
        return text.replace(secret, "*" * len(secret)) if secret else text

    seen = b""
    try:
        with ports.open_port(port, timeout=0.05) as s:
            s.reset_input_buffer()
            s.write(b"\r" + asked + b"\r")
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                seen += s.read(4096)
                # Only what follows the console's echo of our line answers it.
                mine = seen.split(asked + b"\r\n", 1)
                for line in mine[1].split(b"\n")[:-1] if len(mine) == 2 else ():
                    line = line.strip().removeprefix(b"brewmeter> ")
                    got = answer(line)
                    if got is not None:
                        return got
                    if line.startswith(b"error: "):
                        raise NoBrewmeter(f"{port}: not done: {said(line[7:])}")
    except serial.SerialException as e:
        raise ports.PortError(f"{port}: disconnected in the middle of the reply ({e})") from e
    text = seen.decode(errors="replace")
    if ">>>" in text or "raw REPL" in text:
        raise NoBrewmeter(f"{port}: the MicroPython REPL answers, not brewmeter: the app is "
                          "stopped (it comes back by itself once the port has been quiet for "
                          "the board's repl_idle_s, 5 minutes by default; `brewmeter restart` "
                          "brings it back now)")
    if not seen.strip():
        raise NoBrewmeter(f"{port}: no answer within {timeout:.0f} s (is the machine on?)")
    reply = said(seen.split(asked, 1)[-1]).strip()  # what came back, our line's echo left out
    raise NoBrewmeter(f"{port}: {silent}" + (f": {reply[:80]!r}" if reply else ""))


def _json(line: bytes) -> dict | list | None:
    if line[:1] in (b"{", b"[") and line[-1:] in (b"}", b"]"):
        try:
            return json.loads(line)
        except ValueError:
            pass
    return None


def ask(port: str, command: str, timeout: float = 3.0) -> dict | list:
    """Send `command --json` to the service console and return its parsed reply."""
    return _exchange(port, command.encode() + b" --json", timeout, _json,
                     "something other than brewmeter answers")


def act(port: str, line: str, pin: str, done: tuple[bytes, ...], timeout: float = 5.0) -> str:
    """A service action, `LINE --pin PIN` on the console: the first answer line starting
    with one of `done`. Raises NoBrewmeter if the console refuses it (a wrong PIN, the PIN
    lock) or nobody answers."""

    def finished(got: bytes) -> str | None:
        if got.startswith(done) and not got.endswith(b": started"):
            return got.decode()
        return None

    return _exchange(port, (line + " --pin " + pin).encode(), timeout, finished,
                     f"no answer to '{line}' within {timeout:.0f} s", secret=pin)


def unlock(port: str, pin: str, timeout: float = 5.0) -> str:
    """`service unlock --pin PIN` on the console: opens a locked port (Ctrl-C, the REPL,
    mpremote) for the board's maintenance window. Returns the console's answer; raises
    NoBrewmeter if it refuses (a wrong PIN, the PIN lock) or nobody answers."""
    try:
        return act(port, "service unlock", pin, (b"unlock: the port",), timeout)
    except NoBrewmeter as e:
        if "REPL answers" in str(e):
            return "unlock: the REPL answers already (the app is stopped)"
        raise NoBrewmeter(str(e).replace("not done:", "not unlocked:")) from None


READY = b"brewmeter ready"  # the app's first line after a boot
# What a restart quotes of the device's output leaves out the lines that could echo a PIN or
# the provisioning (a console line typed with --pin, provision.json read at the REPL), and
# masks what looks like a PIN or a key in the others.
_SECRET_LINE = re.compile(r"--pin|[\"'](?:key|password|service_pin(?:_hash)?)[\"']", re.I)
_SECRET_WORD = re.compile(r"\b\d{6,8}\b|[0-9a-f]{32,}", re.I)


def _quotable(out: bytes) -> str:
    lines = out.decode(errors="replace").splitlines()
    return _SECRET_WORD.sub("...", "\n".join(x for x in lines if not _SECRET_LINE.search(x)))


def restart(port: str, timeout: float = 15.0) -> str:
    """Bring the app back at once, whatever runs (the app, the REPL, the raw REPL): Ctrl-C
    (the app saves), then a soft reset. Returns the app's ready line."""
    with ports.open_port(port, timeout=0.2) as s:
        s.write(b"\r\x03\x03")  # stop whatever runs, to the friendly REPL
        time.sleep(0.2)
        s.reset_input_buffer()
        s.write(b"\x04")  # soft reset: boot.py, then main.py
        seen = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            seen += s.read(256)
            i = seen.find(READY)
            if i >= 0 and seen.find(b"\n", i) > 0:
                return seen[i:seen.index(b"\n", i)].decode(errors="replace").strip()
        # No restart: a locked app ignores Ctrl-C and Ctrl-D, and answers Ctrl-A (a
        # REPL would enter the raw REPL: Ctrl-B leaves it again).
        s.write(b"\r\x01")
        time.sleep(1)
        s.write(b"\x02")
        if b"locked: unlock with --pin" in seen + s.read(4096):
            raise NoBrewmeter(f"{port}: locked: open it with `brewmeter unlock` first")
    tail = _quotable(seen)[-300:]
    raise NoBrewmeter(f"{port}: no ready line within {timeout:.0f} s; it said: {tail}")


def show(command: str, data: dict | list) -> str:
    """A read command's answer in the device console's own words (its code, run here)."""
    from brewmeter import standins

    standins.install()
    from app.reads import human

    return human(command, data)


class ReportError(Exception):
    """Where the report cannot go, in words a user can act on."""


def report(port: str, out: Path | None = None, force: bool = False) -> Path:
    """Everything a visit report needs, with the time it was read, into `out` (default:
    DEVICE_ID-DATE.json here); an existing file is kept unless `force`. Returns the file."""
    if out is not None and out.exists() and not force:
        raise ReportError(f"{out} already exists: give --force to overwrite it, or another "
                          f"--out")
    now = datetime.now(UTC)
    doc = {"read_at": now.isoformat(timespec="seconds"), "port": port}
    for what in ("status", "counters", "filter", "consumables", "faults", "events", "config"):
        doc[what] = ask(port, what)
    if out is None:
        dev = doc["status"].get("device_id") if isinstance(doc["status"], dict) else None
        if dev is not None and not is_device_id(dev):  # "../x" would write elsewhere
            raise ReportError(f"the device reports the id {str(dev)[:40]!r}, which is no device "
                              f"id ({DEVICE_ID_RULE}): nothing written; give --out FILE to "
                              f"keep its report")
        out = Path(f"{dev or 'device'}-{now.date().isoformat()}.json")
    try:
        with out.open("w" if force else "x") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
    except FileExistsError:
        raise ReportError(f"{out} already exists: give --force to overwrite it, or "
                          f"--out") from None
    except OSError as e:
        raise ReportError(f"{out}: cannot write: {e.strerror}") from None
    return out


def interactive(port: str) -> int:
    """The console in this terminal: Ctrl-C stays on the laptop; exit, quit, Ctrl-] leave."""
    from brewmeter import console_term

    return console_term.run(port)
