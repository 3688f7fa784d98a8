"""Nothing the laptop's tools print holds a secret they were given (a service PIN, a device
key, an admin token): each command's output and errors, on success and on failure, against
the emulated board and cloud, and against a port where something else answers."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator

import pytest
from brewmeter import cli

PIN = "246810"


class Foreign:
    """Something other than brewmeter on a serial port (a pty): it echoes what it is sent,
    as the console does, and answers each line with `reply` (garbage, or nothing)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.master, self.slave = os.openpty()
        self.port = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for b in data:
                os.write(self.master, b"\r\n" + self.reply if b == 13 else bytes([b]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture(params=[b"", b"\x1b[2J?? OK\r\n\xff\xfe garbage 42\r\n"], ids=["silent", "garbage"])
def foreign(request) -> Iterator[Foreign]:
    f = Foreign(request.param)
    yield f
    f.close()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["unlock"], ["refill", "coffee"]])
def test_no_pin_in_what_the_field_commands_say_when_something_else_answers(
        foreign, command, capsys):
    assert cli.main([*command, "--port", foreign.port, "--pin", PIN]) == 1
    out, err = capsys.readouterr()
    assert "answer" in err, err  # it says what went wrong ...
    assert PIN not in out + err  # ... without the PIN it sent


def test_no_pin_in_what_a_sync_says_when_something_else_answers(foreign):
    from brewmeter import fieldtech

    with pytest.raises(fieldtech.NoBrewmeter) as e:
        fieldtech.act(foreign.port, "sync", PIN, (b"sync: ",), timeout=0.5)
    assert "no answer to 'sync'" in str(e.value) and PIN not in str(e.value), e.value
