"""The emulated board's serial port: the pty a USB adapter would be (output dropped while no
program has it open, as a UART's is), the input to the interpreter (Ctrl-C as SIGINT when
the device would take it as an interrupt), the output cooked as the ESP32's ("\\n" to
"\\r\\n", raw frames passed on), the REPL mode it shows, and the transcript."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import termios
import time

from brewmeter.emulator.common import (
    CTRL_C,
    FRIENDLY_BANNER,
    INTR_FALLBACK_S,
    PENDING_MAX,
    RAW_BANNER,
    RAW_FRAME,
    RAW_HEAD,
    SIGINT_GAP_S,
    STDIN_MAX,
    TRANSCRIPT_MAX,
    _sigint_caught,
)


class Serial:
    """Board's serial side (a mixin: the state is Board's, set in Board.__init__)."""

    def transcript(self, start: int = 0) -> bytes:
        """Everything the board wrote to its serial port (connected or not) from byte `start`
        on; positions count from the first boot."""
        with self._lock:
            return bytes(self._transcript[max(0, start - self._transcript_base):])

    def transcript_end(self) -> int:
        with self._lock:
            return self._transcript_base + len(self._transcript)

    def wait_output(self, pattern: bytes, timeout: float = 10, start: int = 0) -> int:
        """Wait until the serial output from `start` on contains `pattern`; returns the
        position just after it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                rel = max(0, start - self._transcript_base)
                i = self._transcript.find(pattern, rel)
                if i >= 0:
                    return self._transcript_base + i + len(pattern)
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = bytes(self._transcript[-2000:])
                    raise TimeoutError(f"no {pattern!r} on the serial port; last output: {tail!r}")
                self._lock.wait(left)

    # -- loop thread: the serial port

    def _check_client(self) -> None:
        # POLLHUP on the master means no program has the slave open.
        assert self._loop is not None and self._slave_poll is not None
        if self._stopping or self._master < 0:
            return
        hup = any(ev & select.POLLHUP for _, ev in self._slave_poll.poll(0))
        if hup:
            if self._client:
                self._disconnected()
            self._recent.clear()
        elif not self._client:
            # Opened since the last look: what the board wrote meanwhile may have come after
            # the open, so the program gets it.
            self._client = True
            self._loop.add_reader(self._master, self._serial_readable)
            self._pending += self._recent
            self._recent.clear()
            self._flush_serial()
        self._loop.call_later(0.02, self._check_client)

    def _disconnected(self) -> None:
        assert self._loop is not None
        self._client = False
        self._loop.remove_reader(self._master)
        self._loop.remove_writer(self._master)
        self._writing = False
        self._pending.clear()
        # What the last program did not read is gone, as on a real port.
        with contextlib.suppress(OSError):
            termios.tcflush(self._master, termios.TCOFLUSH)

    def _serial_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: the last program closed the port
            self._disconnected()
            return
        if data:
            self._input(data)

    def _emit(self, data: bytes) -> None:
        """Serial output: recorded, mode-tracked, sent if a program has the port open."""
        if not data:
            return
        buf = self._tail + data
        r, f = buf.rfind(RAW_BANNER), buf.rfind(FRIENDLY_BANNER)
        if r >= 0 or f >= 0:
            self._raw = r > f
        self._tail = buf[-64:]
        now = time.monotonic()
        if now - self._activity >= 0.2:  # for the board's dupterm stand-in (machine.py)
            self._activity = now
            self._bus_send(b"A\n")
        with self._lock:
            self._transcript += data
            extra = len(self._transcript) - TRANSCRIPT_MAX
            if extra > 0:
                del self._transcript[:extra]
                self._transcript_base += extra
            self._lock.notify_all()
        if not self._client:
            self._recent += data
            del self._recent[:-PENDING_MAX]
            return
        self._pending += data
        if len(self._pending) > PENDING_MAX:
            del self._pending[: len(self._pending) - PENDING_MAX]
        self._flush_serial()

    def _flush_serial(self) -> None:
        assert self._loop is not None
        while self._pending:
            try:
                n = os.write(self._master, self._pending)
            except BlockingIOError:
                break
            except OSError:
                self._disconnected()
                return
            del self._pending[:n]
        if self._pending and not self._writing:
            self._writing = True
            self._loop.add_writer(self._master, self._flush_serial)
        elif not self._pending and self._writing:
            self._writing = False
            self._loop.remove_writer(self._master)

    def _input(self, data: bytes) -> None:
        if self._hold:
            self._held += data
            del self._held[STDIN_MAX:]
            return
        start = 0
        while True:
            i = data.find(CTRL_C, start)
            if i < 0:
                self._child_write(data[start:])
                return
            self._child_write(data[start:i])
            self._ctrl_c()
            if self._hold:  # what follows waits for the interrupt
                self._input(data[i + 1:])
                return
            start = i + 1

    def _ctrl_c(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if not _sigint_caught(proc.pid):
            self._child_write(b"\x03")
            return
        # The interrupt char is set: raised as KeyboardInterrupt where the interpreter can
        # take it, as the ESP32's UART interrupt schedules it: at the board's next poll of
        # its pins (machine.py), else as SIGINT, which the unix port raises wherever it lands.
        # The input after it waits meanwhile, as in the UART's buffer: it is the REPL's.
        if self._intr_pending is None and self._bus_send(b"I\n"):
            self._intr_pending = proc
            self._hold = True
            self._loop.call_later(INTR_FALLBACK_S, self._intr_fallback, proc)
        elif self._intr_pending is None:
            self._sigint(proc)

    def _intr_taken(self) -> None:
        """Bus "i": the board raised the Ctrl-C."""
        self._intr_pending = None
        self._release_input()

    def _intr_fallback(self, proc: subprocess.Popen[bytes]) -> None:
        if self._intr_pending is not proc:  # raised (bus "i"), or another boot since
            return
        self._intr_pending = None
        self._bus_send(b"U\n")
        self._sigint(proc)
        if self._proc is proc:
            self._release_input()

    def _sigint(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None or not _sigint_caught(proc.pid):
            return
        now = time.monotonic()
        if now - self._last_sigint >= SIGINT_GAP_S:
            self._last_sigint = now
            os.kill(proc.pid, signal.SIGINT)

    def _release_input(self) -> None:
        self._hold = False
        held, self._held = bytes(self._held), bytearray()
        if held:
            self._input(held)

    def _child_write(self, data: bytes) -> None:
        proc = self._proc
        if not data or proc is None or proc.stdin is None:
            return
        self._stdin_buf += data
        if len(self._stdin_buf) > STDIN_MAX:
            del self._stdin_buf[STDIN_MAX:]
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        assert self._loop is not None
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        if proc.stdin.closed:  # the interpreter is gone, the next not yet started
            self._stdin_buf.clear()
            return
        fd = proc.stdin.fileno()
        while self._stdin_buf:
            try:
                n = os.write(fd, self._stdin_buf)
            except BlockingIOError:
                break
            except OSError:  # the interpreter is gone
                self._stdin_buf.clear()
                break
            del self._stdin_buf[:n]
        if self._stdin_buf and not self._stdin_writing:
            self._stdin_writing = True
            self._loop.add_writer(fd, self._flush_stdin)
        elif not self._stdin_buf and self._stdin_writing:
            self._stdin_writing = False
            self._loop.remove_writer(fd)

    # -- loop thread: the REPL's output, cooked

    def _cook(self, data: bytes) -> bytes:
        # The ESP32's stdout turns every "\n" into "\r\n"; pyexec's own strings already
        # carry "\r\n".
        if not data:
            return data
        lead = b""
        if self._last_cr and data[:1] == b"\n":
            lead, data = b"\n", data[1:]
        self._last_cr = data.endswith(b"\r")
        return lead + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def _child_output(self, data: bytes) -> None:
        # Cooked, except what firmware wrote to sys.stdout.buffer (raw on the ESP32): it comes
        # framed by esp32/rawsys.py, RAW_FRAME and 4 hex digits of length.
        buf, out = self._frame + data, bytearray()
        self._frame = b""
        i = 0
        while i < len(buf):
            if self._raw_left:
                chunk = buf[i:i + self._raw_left]
                out += chunk
                self._raw_left -= len(chunk)
                self._last_cr = False
                i += len(chunk)
                continue
            j = buf.find(RAW_FRAME, i)
            if j < 0:
                end = len(buf) - 1 if buf.endswith(RAW_FRAME[:1]) else len(buf)
                out += self._cook(buf[i:end])
                self._frame = buf[end:]  # a frame may start with that last byte
                break
            out += self._cook(buf[i:j])
            if len(buf) - j < RAW_HEAD:
                self._frame = buf[j:]
                break
            try:
                self._raw_left = int(buf[j + 2:j + RAW_HEAD], 16)
            except ValueError:  # not a frame after all
                out += self._cook(buf[j:j + 2])
            i = j + RAW_HEAD if self._raw_left else j + 2
        self._emit_cooked(bytes(out))

    def _emit_cooked(self, out: bytes) -> None:
        if self._swallow is not None:
            # A raw-REPL boot: hide the friendly banner until the raw REPL's own banner.
            self._swallow += out
            i = self._swallow.find(RAW_BANNER)
            if i < 0:
                if len(self._swallow) > 4096:
                    del self._swallow[:-len(RAW_BANNER)]
                return
            out, self._swallow = bytes(self._swallow[i:]), None
        self._emit(out)
