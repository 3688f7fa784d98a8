"""Nothing the laptop's tools print holds a secret they were given (a service PIN, a device
key, an admin token): each command's output and errors, on success and on failure, against
the emulated board and cloud, and against a port where something else answers."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brewmeter import cli
from test_lock import _answers_locked

PIN = "246810"
ROOT = Path(__file__).resolve().parents[1]


class Foreign:
    """Something other than brewmeter on a serial port (a pty): it echoes what it is sent,
    as the console does, and answers each line with `reply` (garbage, or nothing)."""

    def __init__(self, reply: bytes, on: int = 13) -> None:
        self.reply, self.on = reply, on  # `reply` after each byte `on` (a line's end)
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
                os.write(self.master, b"\r\n" + self.reply if b == self.on else bytes([b]))

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
        foreign, command, capsys, monkeypatch):
    monkeypatch.setenv("BREWMETER_PIN", PIN)
    assert cli.main([*command, "--port", foreign.port]) == 1
    out, err = capsys.readouterr()
    assert "answer" in err, err  # it says what went wrong ...
    assert PIN not in out + err  # ... without the PIN it sent


def test_no_pin_in_what_a_sync_says_when_something_else_answers(foreign):
    from brewmeter import fieldtech

    with pytest.raises(fieldtech.NoBrewmeter) as e:
        fieldtech.act(foreign.port, "sync", PIN, (b"sync: ",), timeout=0.5)
    assert "no answer to 'sync'" in str(e.value) and PIN not in str(e.value), e.value


KEY = "9f" * 32


@pytest.mark.slow
def test_no_pin_nor_key_in_what_a_restart_quotes_of_the_device():
    from brewmeter import fieldtech

    said = (f">>> service unlock --pin {PIN}\r\nSyntaxError: invalid syntax\r\n"
            f"{{'key': '{KEY}', 'wifi': {{'password': 'w1fi-pw'}}}}\r\n"
            f"{{\r\n \"key\": \"{KEY}\",\r\n \"service_pin\": \"{PIN}\"\r\n}}\r\n"
            f"brewmeter: not started: {PIN} {KEY}\r\n>>> ").encode()
    f = Foreign(said, on=4)  # the soft reset (Ctrl-D) brings it
    try:
        with pytest.raises(fieldtech.NoBrewmeter) as e:
            fieldtech.restart(f.port, timeout=1)
    finally:
        f.close()
    assert "no ready line" in str(e.value) and "brewmeter: not started" in str(e.value)
    no_secret([PIN, KEY, KEY[:20], "w1fi-pw"], str(e.value))


def at_terminal(args: list[str], typed: str, env: dict[str, str] | None = None,
                prompt: bytes = b"service PIN: ", timeout: float = 120
                ) -> tuple[int, str, str, bytes]:
    """Run `args` with a terminal (a pty) as stdin, in a session of its own; type `typed`
    once it asks (getpass asks on the terminal, or on stderr when the terminal is not the
    session's). (exit code, stdout, stderr, what the terminal showed)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, **(env or {})})
    os.close(slave)
    try:
        assert proc.stderr is not None
        err, shown, end = b"", b"", time.monotonic() + timeout
        while prompt not in err + shown:
            assert proc.poll() is None and time.monotonic() < end, (err, shown)
            for fd in select.select([proc.stderr.fileno(), master], [], [], 1)[0]:
                got = os.read(fd, 4096)
                if fd == master:
                    shown += got
                else:
                    err += got
        os.write(master, typed.encode() + b"\r")
        while proc.poll() is None:  # the terminal's side, until it ends
            if select.select([master], [], [], 0.2)[0]:
                try:
                    shown += os.read(master, 4096)
                except OSError:
                    break
        out, rest = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode(), (err + rest).decode(), shown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def brewmeter(*args: str, env: dict[str, str] | None = None, module: str = "brewmeter.cli",
              timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BREWMETER_")}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout, env=base | (env or {}))


def no_secret(secrets: list[str], *texts: str) -> None:
    for s in secrets:
        for t in texts:
            assert s not in t, (s, t)


@pytest.mark.slow
def test_a_pin_typed_at_a_terminal_is_not_echoed_nor_printed(foreign):
    code, out, err, shown = at_terminal(
        [sys.executable, "-m", "brewmeter.cli", "unlock", "--port", foreign.port], PIN)
    assert code == 1 and "no answer to 'service unlock'" in err, (out, err)
    assert PIN.encode() not in shown  # the terminal did not echo it
    no_secret([PIN], out, err)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple]:
    """A locked machine on the emulated board (known PIN and key), its cloud knowing it."""
    from brewmeter.emulator.board import Board
    from brewmeter.flasher import Flasher
    from brewmeter.flashfiles import emulator_provision
    from brewmeter.profiles import BOARDS
    from brewmeter.runs.demo import cloud_for

    d = tmp_path_factory.mktemp("secrets")
    prof = json.loads((BOARDS / "emulator.json").read_text()) | {"unlock_s": 8,
                                                                 "repl_idle_s": 5}
    (d / "board.json").write_text(json.dumps(prof))
    prov = emulator_provision() | {"lock": True, "service_pin": PIN}
    with cloud_for(prov) as cloud, Board(d / "flash.img", board_profile=str(d / "board.json")) as b:
        (d / "prov.json").write_text(json.dumps(prov))
        (d / "pin").write_text(PIN + "\n")
        Flasher(b.serial_port).flash(str(d / "board.json"), prov)
        yield b, prov, cloud, d


@pytest.mark.board
@pytest.mark.slow
def test_no_secret_in_what_the_field_commands_say(site):
    board, prov, cloud, d = site
    port = board.serial_port
    wrong = "135790"
    runs = [
        (brewmeter("unlock", "--port", port, env={"BREWMETER_PIN": wrong}), 1, "wrong PIN"),
        (brewmeter("unlock", "--port", port, "--pin-file", str(d / "pin")), 0, "open for"),
        (brewmeter("refill", "coffee", "--port", port, env={"BREWMETER_PIN": PIN}), 0,
         "coffee refilled"),
        (brewmeter("sync", "--port", port, env={"BREWMETER_PIN": PIN}), 0, "sync: ok"),
        (brewmeter("sync", "--port", "/dev/ttyNOPE", env={"BREWMETER_PIN": PIN}), 1,
         "no such port"),
        (brewmeter("report", "--port", port, "--out", str(d / "visit.json")), 0, "written"),
        (brewmeter("status", "--port", port, "--json"), 0, "device_id"),
        (brewmeter("unlock", "--pin", PIN), 2, "not taken on the command line"),
    ]
    for p, code, says in runs:
        assert p.returncode == code and says in p.stdout + p.stderr, (p.args, p.stdout,
                                                                      p.stderr)
        no_secret([PIN, wrong, prov["key"], cloud.admin_token], p.stdout, p.stderr)
    no_secret([PIN, prov["key"]], (d / "visit.json").read_text())


@pytest.mark.board
@pytest.mark.slow
def test_no_pin_in_what_flash_sh_says_on_a_locked_machine(site):
    board, prov, cloud, d = site
    port = board.serial_port
    flash = [str(ROOT / "flash.sh"), "--port", port, "--provision", str(d / "prov.json")]
    wrong = "864200"
    end = time.monotonic() + 30  # locked again (an earlier test's unlock window over)
    while not _answers_locked(port, timeout=1.0):
        assert time.monotonic() < end
    p = subprocess.run(flash, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "locked: give its service PIN" in p.stderr, p.stderr
    p2 = subprocess.run(flash, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "BREWMETER_PIN": wrong})
    assert p2.returncode == 2 and "wrong PIN" in p2.stderr, p2.stderr
    p3 = subprocess.run([*flash, "--board", str(d / "board.json"), "--dry-run"],
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "BREWMETER_PIN": PIN})
    assert p3.returncode == 0 and "service unlock --pin ******" in p3.stdout, p3.stderr
    # At a terminal, flash.sh asks once the device says it is locked (no echo), then flashes.
    code, out, err, shown = at_terminal(flash, PIN)
    assert code == 0 and f"flashed {port}" in out, (out, err)
    assert PIN.encode() not in shown
    for text in (p.stdout, p.stderr, p2.stdout, p2.stderr, p3.stdout, p3.stderr, out, err):
        no_secret([PIN, wrong, prov["key"]], text)


def _cloud_lines(args: list[str], env: dict[str, str], lines: int) -> tuple[list[str], str]:
    """Start `brewmeter cloud ARGS`, read its first `lines` lines, stop it (SIGTERM): (the
    lines, the rest of stdout and stderr)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BREWMETER_")}
    proc = subprocess.Popen([sys.executable, "-m", "brewmeter.cloud", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=base | env)
    try:
        assert proc.stdout is not None
        got = [proc.stdout.readline() for _ in range(lines)]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    return got, out + err


def _get(url: str, token: str) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + "/v1/devices", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_the_cloud_prints_no_token_nor_key_and_keeps_a_made_token_in_a_private_file(tmp_path):
    from brewmeter.flashfiles import emulator_provision

    prov = emulator_provision()
    (tmp_path / "prov.json").write_text(json.dumps(prov))
    token = "cloud-t0ken-from-env"
    lines, rest = _cloud_lines(["--device-file", str(tmp_path / "prov.json")],
                               {"BREWMETER_ADMIN_TOKEN": token}, 2)
    assert lines[0].startswith("brewmeter cloud listening on http://127.0.0.1:")
    assert lines[1].startswith("web console: "), lines
    no_secret([token, prov["key"]], *lines, rest)

    # No token given: a new one, in a file of its own (0600) whose path is printed.
    base = {k: v for k, v in os.environ.items() if not k.startswith("BREWMETER_")}
    proc = subprocess.Popen([sys.executable, "-m", "brewmeter.cloud", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base)
    try:
        assert proc.stdout is not None
        listening, note = proc.stdout.readline(), proc.stdout.readline()
        url = listening.split(" on ")[1].split()[0]
        made = Path(note.split(" in ")[1].split()[0])
        assert note.startswith("admin token: in ") and made.stat().st_mode & 0o777 == 0o600
        assert made.parent.stat().st_mode & 0o777 == 0o700
        new = made.read_text().strip()
        assert _get(url, new) == 200 and _get(url, "nope") == 401
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    no_secret([new], listening, note, out, err)
    assert not made.exists()  # removed with the cloud

    # --admin-token-file naming a file not there yet: made there, 0600; then read from it.
    tf = tmp_path / "admin.token"
    lines, rest = _cloud_lines(["--admin-token-file", str(tf)], {}, 2)
    assert lines[1] == f"admin token: new, written to {tf} (readable by you alone)\n", lines
    assert tf.stat().st_mode & 0o777 == 0o600
    lines2, rest2 = _cloud_lines(["--admin-token-file", str(tf)], {}, 2)
    assert lines2[1].startswith("web console: ")
    no_secret([tf.read_text().strip()], *lines, *lines2, rest, rest2)


@pytest.mark.slow
def test_provisioning_prints_no_token_key_pin_or_password(tmp_path):
    from brewmeter.cloud.server import cloud_thread

    with cloud_thread() as cloud:
        (tmp_path / "token").write_text(cloud.admin_token + "\n")
        base = ["provision", "new", "--count", "2", "--prefix", "sec", "--cloud", cloud.url,
                "--wifi-ssid", "shop", "--out", str(tmp_path / "out")]
        wifi = {"BREWMETER_WIFI_PASSWORD": "w1fi-passw0rd"}
        bad = brewmeter(*base, env=wifi | {"BREWMETER_ADMIN_TOKEN": "wr0ng-t0ken"})
        assert bad.returncode == 2 and "refused the admin token" in bad.stderr, bad.stderr
        ok = brewmeter(*base, "--admin-token-file", str(tmp_path / "token"), env=wifi)
        assert ok.returncode == 0, ok.stderr
    provs = [json.loads(f.read_text()) for f in sorted((tmp_path / "out").glob("*.json"))]
    assert len(provs) == 2
    secrets = [cloud.admin_token, "wr0ng-t0ken", "w1fi-passw0rd"]
    for p in provs:
        secrets += [p["key"], p["service_pin"]]
    no_secret(secrets, bad.stdout, bad.stderr, ok.stdout, ok.stderr)


@pytest.mark.parametrize("argv", [
    ["unlock", "--pin", PIN], ["sync", f"--pin={PIN}"], ["refill", "coffee", f"--pi={PIN}"],
    ["refill", PIN], ["sync", "--port", "x", PIN],
    ["conform", "--url", "http://x", f"--admin-token={PIN}"],
    ["conform", "--url", "http://x", f"--admin-tok={PIN}"],
    ["provision", "new", "--count", "1", "--prefix", "p", "--cloud", "http://x",
     "--wifi-ssid", "s", "--out", "o", f"--admin={PIN}"],
    ["cloud", "--device", f"bm-x:{PIN}"], ["cloud", f"--dev=bm-x:{PIN}"],
    ["cloud", f"--admin-token={PIN}"],
    ["flash.sh", "--port", "x", "--pin", PIN], ["flash.sh", "--port", "x", f"--pi={PIN}"]])
def test_a_secret_on_the_command_line_is_refused_and_not_repeated(argv, capsys):
    from brewmeter import flashsh

    with pytest.raises(SystemExit) as e:
        flashsh.main(argv[1:]) if argv[0] == "flash.sh" else cli.main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and "usage: " + ("flash.sh" if argv[0] == "flash.sh" else
                                              "brewmeter") in err, err
    no_secret([PIN], out, err)
