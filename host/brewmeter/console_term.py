"""`brewmeter console`: the machine's service console in this terminal, over pyserial.

The keys a person presses are read raw and sent as typed, but for the few the laptop keeps:
Ctrl-C is not sent (on the machine it stops the app into the MicroPython REPL; Ctrl-T then
C sends one on purpose), `exit`, `quit` and Ctrl-] leave. An unplug ends the session with one
line and exit 1; the REPL answering instead of the app is said, with how to get it back."""

from __future__ import annotations

import os
import select
import sys
import termios
import tty
from typing import BinaryIO

import serial

from brewmeter import ports

CTRL_C, CTRL_T, CTRL_RB = 0x03, 0x14, 0x1D
ENTRY = ("console on %s: type help; exit, quit or Ctrl-] leave. Ctrl-C is not sent to the "
         "machine (it would stop the app): Ctrl-T then C sends one on purpose.")
NOT_SENT = "(Ctrl-C not sent: it stops the app. Ctrl-T then C sends it; exit or Ctrl-] leave)"
MENU = "(Ctrl-T: then C sends Ctrl-C, T sends Ctrl-T)"
REPL = ("console: the MicroPython REPL answers (>>>), not the app (brewmeter>): the app is "
        "stopped. Leave (exit or Ctrl-]) and run `brewmeter restart` to bring it back now, or "
        "it comes back by itself once the port has been quiet for the board's repl_idle_s.")
GONE = "console: the device went away (unplugged?)"
LEAVE_WORDS = ("exit", "quit")


class Keys:
    """What the typed bytes do (pure): bytes for the machine, notes for the person, leave."""

    def __init__(self) -> None:
        self.line = bytearray()  # what is typed on the current line, to catch exit/quit
        self.menu = False  # after Ctrl-T

    def feed(self, data: bytes) -> tuple[bytes, list[str], bool]:
        send = bytearray()
        notes: list[str] = []
        for b in data:
            if self.menu:
                self.menu = False
                if b in (ord("c"), ord("C"), CTRL_C):
                    send.append(CTRL_C)
                    notes.append("(Ctrl-C sent)")
                elif b in (ord("t"), ord("T"), CTRL_T):
                    send.append(CTRL_T)
                else:
                    notes.append(MENU)
            elif b == CTRL_T:
                self.menu = True
            elif b == CTRL_RB:
                return bytes(send), notes, True
            elif b == CTRL_C:
                notes.append(NOT_SENT)
            elif b in (10, 13):
                if self.line.strip().decode("ascii", "replace") in LEAVE_WORDS:
                    # Take the word back on the machine (its console erases on DEL): the
                    # next session starts on a clean line.
                    erase = b"\x7f" * len(self.line)
                    self.line.clear()
                    return bytes(send) + erase, notes, True
                self.line.clear()
                send.append(b)
            elif b in (8, 127):
                if self.line:
                    self.line.pop()
                send.append(b)
            else:
                if 32 <= b < 127 and len(self.line) < 200:
                    self.line.append(b)
                send.append(b)
        return bytes(send), notes, False


class Screen:
    """Notices what the machine writes: the REPL's prompt instead of the app's (pure)."""

    def __init__(self) -> None:
        self.tail = b""
        self.in_repl = False

    def feed(self, data: bytes) -> list[str]:
        self.tail = (self.tail + data)[-64:]
        t = self.tail
        repl = t.rfind(b">>> "), t.rfind(b"raw REPL")
        app = t.rfind(b"brewmeter> ")
        if max(repl) > app and not self.in_repl:
            self.in_repl = True
            return [REPL]
        if app > max(repl):
            self.in_repl = False
        return []


def run(port: str, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """The session: 0 when the person leaves, 1 when the device goes away."""
    s = ports.open_port(port, timeout=0)  # its clear errors first
    fin = stdin or sys.stdin.buffer
    fout = stdout or sys.stdout.buffer
    fd = fin.fileno()
    saved = None
    if os.isatty(fd):
        saved = termios.tcgetattr(fd)
        tty.setraw(fd)

    def say(text: str) -> None:
        fout.write(b"\r\n" + text.encode() + b"\r\n")
        fout.flush()

    keys, screen = Keys(), Screen()
    try:
        say(ENTRY % port)
        s.write(b"\r")  # a fresh line: the REPL answers it with its prompt, the app not
        while True:
            ready, _, _ = select.select([fd, s.fileno()], [], [], 0.5)
            if s.fileno() in ready:
                data = s.read(4096)
                fout.write(data)
                fout.flush()
                for note in screen.feed(data):
                    say(note)
            if fd in ready:
                typed = os.read(fd, 1024)
                if not typed:  # stdin closed (not a terminal): leave as by exit
                    return 0
                send, notes, leave = keys.feed(typed)
                if send:
                    s.write(send)
                for note in notes:
                    say(note)
                if leave:
                    say("console: left")
                    return 0
            elif not os.path.exists(port):
                raise serial.SerialException("the port is gone")
    except (serial.SerialException, OSError):
        say(GONE)
        return 1
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        try:
            s.close()
        except (serial.SerialException, OSError):
            pass
