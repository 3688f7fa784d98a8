"""--help as a person reads it: every option says what it does and its default; nothing
promised for "later"; the commands of the README and docs/ are the ones that run from a
checkout."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
from brewmeter import cli, flashsh

ROOT = Path(__file__).resolve().parents[1]


def _parsers(ap: argparse.ArgumentParser, name: str):
    yield name, ap
    for sub, p in cli.commands(ap).items():
        yield from _parsers(p, f"{name} {sub}")


def _emulate_parser() -> argparse.ArgumentParser:
    from brewmeter.emulator import board

    seen: list[argparse.ArgumentParser] = []

    class Stop(Exception):
        pass

    real = argparse.ArgumentParser.parse_args

    def grab(self, *a, **k):
        seen.append(self)
        raise Stop

    argparse.ArgumentParser.parse_args = grab  # type: ignore[method-assign]
    try:
        board.emulate_main([])
    except Stop:
        pass
    finally:
        argparse.ArgumentParser.parse_args = real  # type: ignore[method-assign]
    return seen[0]


def test_every_option_has_help_and_shows_its_default():
    parsers = [*_parsers(cli.parser(), "brewmeter"), ("flash.sh", flashsh.arg_parser()),
               ("brewmeter emulate", _emulate_parser())]
    assert len(parsers) > 15
    for name, ap in parsers:
        text = ap.format_help()
        text = text[text.index("options:"):]
        for a in ap._actions:
            if not a.option_strings or isinstance(a, argparse._HelpAction):
                continue
            opt = a.option_strings[-1]
            assert a.help, f"{name} {opt}: no help text"
            if not (a.default is None or a.default is False or a.default == argparse.SUPPRESS):
                block = text[text.index(opt + " "):] if opt + " " in text else text
                block = block[:block.find("\n  -", 1)]
                assert "default" in block, f"{name} {opt}: its default is not shown"


def test_help_says_nothing_is_for_later_and_runs_from_a_checkout():
    for cmd in (["./brewmeter", "--help"], ["./flash.sh", "--help"],
                ["./brewmeter", "emulate", "--help"], ["./brewmeter", "simulate", "--help"]):
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert "(later)" not in p.stdout and "usage:" in p.stdout
    p = subprocess.run(["./brewmeter", "simulate", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    assert "(default: 30)" in p.stdout


@pytest.mark.slow
def test_readme_commands_are_written_as_they_run_from_a_checkout():
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md",
                                                 *sorted((ROOT / "docs").glob("*.md"))])
    names = "|".join(cli.commands(cli.parser()))
    bare = [line for line in readme.splitlines()
            if re.search(rf"(?<![./\w-])brewmeter ({names})\b", line)]
    assert not bare, "README or docs/ writes `brewmeter ...` (use ./brewmeter):\n" + "\n".join(bare)
    for sub in sorted(set(re.findall(r"\./brewmeter ([a-z][a-z-]+)", readme))):
        p = subprocess.run([sys.executable, "-m", "brewmeter.cli", sub, "--help"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"./brewmeter {sub}: {p.stderr}"
