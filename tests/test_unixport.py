"""BREWMETER_MICROPYTHON: a developer's own build of the unix port instead of the wheel's, for
the emulated board, the bench and the tests; checked before anything runs on it."""

from __future__ import annotations

import os

import pytest
from brewmeter import cli, unixport
from brewmeter.emulator.board import Board


@pytest.fixture
def wheel_link(tmp_path):
    """The wheel's own micropython under another name, as a developer's build would be."""
    link = tmp_path / "my-micropython"
    link.symlink_to(unixport.tool("micropython"))
    return link


def test_the_interpreter_named_is_the_one_used_and_said(monkeypatch, wheel_link):
    monkeypatch.setenv(unixport.ENV, str(wheel_link))
    who = unixport.interpreter()
    assert who["path"] == unixport.micropython() == str(wheel_link)
    assert str(who["version"]).startswith("1.") and who["pointer_bits"] in (32, 64)
    assert unixport.run(["-c", "print(6 * 7)"]).strip() == "42"
    monkeypatch.delenv(unixport.ENV)
    assert unixport.micropython() == unixport.tool("micropython")  # the wheel's, by default


@pytest.mark.parametrize(("make", "said"), [
    (lambda d: d / "missing", "no such file"),
    (lambda d: d, "not an executable file"),  # a directory
    (lambda d: _script(d / "not-executable", "print('hi')", mode=0o644),
     "not an executable file"),
    (lambda d: _script(d / "python", "#!/bin/sh\necho hello\n"), "not MicroPython"),
    (lambda d: _script(d / "crashes", "#!/bin/sh\nexit 3\n"), "not MicroPython"),
])
def test_a_bad_interpreter_is_a_clear_error_before_anything_runs(monkeypatch, tmp_path, make,
                                                                  said):
    bad = make(tmp_path)
    monkeypatch.setenv(unixport.ENV, str(bad))
    with pytest.raises(unixport.InterpreterError, match=f"BREWMETER_MICROPYTHON={bad}: {said}"):
        unixport.micropython()
    with pytest.raises(unixport.InterpreterError, match=said):
        Board(tmp_path / "flash.img")
    assert not (tmp_path / "flash.img").exists()  # nothing was started


def test_bench_with_a_bad_interpreter_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(unixport.ENV, str(tmp_path / "nothing"))
    assert cli.main(["bench", "--only", "core_heap_bytes"]) == 2
    assert "BREWMETER_MICROPYTHON=" in capsys.readouterr().err


def _script(path, text, mode=0o755):
    path.write_text(text)
    os.chmod(path, mode)
    return path
