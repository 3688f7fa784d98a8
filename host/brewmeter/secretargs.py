"""The secrets the laptop's tools are given (a machine's service PIN, the cloud's admin token)
never come on the command line, where `ps` and the shell's history show them. Each comes
from a file (`--pin-file FILE`, `--admin-token-file FILE`), else an environment variable
(`$BREWMETER_PIN`, `$BREWMETER_ADMIN_TOKEN`), else a prompt that does not echo (getpass)
when stdin is a terminal. The old flags (`--pin P`, `--admin-token T`) are refused without
repeating what followed them. No tool prints a secret it was given, nor one it made."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn


class SecretError(Exception):
    """A secret missing or unusable; the message never holds the secret itself."""


def check_pin(text: str) -> str:
    """A service PIN is 6-8 digits, as provisioned: anything else is refused before the
    device is asked, so a slip costs no PIN try."""
    if not (text.isascii() and text.isdigit() and 6 <= len(text) <= 8):
        raise ValueError("a service PIN is 6-8 digits (as in the machine's provisioning file)")
    return text


def _any(text: str) -> str:
    return text


@dataclass(frozen=True)
class Secret:
    flag: str  # the option's name: --FLAG-file, and --FLAG (refused)
    env: str
    what: str
    prompt: str
    check: Callable[[str], str] = _any  # raises ValueError(reason), never quoting the value

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_") + "_file"

    def ways(self) -> str:
        return f"--{self.flag}-file FILE or ${self.env}, or type it when asked at a terminal"


PIN = Secret("pin", "BREWMETER_PIN", "the machine's service PIN (6-8 digits)", "service PIN: ",
             check_pin)
ADMIN_TOKEN = Secret("admin-token", "BREWMETER_ADMIN_TOKEN", "the cloud's admin token",
                     "the cloud's admin token: ")


class _Refused(argparse.Action):
    """An old flag that took a secret: an error naming the ways that do not show it (the
    value given is not repeated: it is a secret)."""

    def __init__(self, *args, ways: str, **kwargs) -> None:
        self.ways = ways
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        parser.error(f"{option_string} is not taken on the command line, where ps and the "
                     f"shell's history show it: give it with {self.ways}")


def refuse(p: argparse.ArgumentParser, flag: str, ways: str) -> None:
    """Refuse the old `--flag VALUE` (hidden from --help)."""
    p.add_argument(f"--{flag}", nargs="?", action=_Refused, ways=ways, help=argparse.SUPPRESS)


# argparse quotes a value it refuses: `refill 246810` (a PIN where the item goes), `--count PIN`.
_REFUSED_VALUE = re.compile(r"(invalid (?:choice|[\w.]+ value)): ('[^']*'|\"[^\"]*\")")


def mask_values(p: argparse.ArgumentParser) -> None:
    """The errors of `p` and of its subcommands name an argument they refuse but not its
    value: a mistyped secret option (`--pi=1234`, `--pin-fil 1234`) or a secret given in a
    positional's place would be quoted whole. (The parsers that take secrets also allow no
    abbreviations, which argparse quotes alike.)"""
    error = p.error

    def masked(message: str) -> NoReturn:
        message = _REFUSED_VALUE.sub(r"\1: ...", message)
        head, sep, rest = message.partition("unrecognized arguments: ")
        if sep:
            message = head + sep + " ".join(
                w.split("=")[0] + "=..." if w.startswith("-") and "=" in w
                else w if w.startswith("-") else "..." for w in rest.split())
        error(message)

    p.error = masked  # type: ignore[method-assign]
    for a in p._actions:  # a subcommand's parser reports its own errors
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                mask_values(sub)


def add(p: argparse.ArgumentParser, s: Secret, note: str = "",
        asked: str = "at a terminal, asked without echo") -> None:
    """--FLAG-file FILE for secret `s` (and --FLAG refused); `note` ends its help."""
    p.add_argument(f"--{s.flag}-file", metavar="FILE", dest=s.dest,
                   help=f"file holding {s.what}; else ${s.env}; else, {asked}. Never on the "
                   f"command line, where ps and shell history show it{note}")
    refuse(p, s.flag, s.ways())


def get(args: argparse.Namespace, s: Secret, env: Mapping[str, str] | None = None,
        ask: bool = True) -> str | None:
    """Secret `s` from --FLAG-file, else the environment, else (with `ask`, stdin a
    terminal) a prompt without echo; checked. None if none of them gives it."""
    env = os.environ if env is None else env
    path = getattr(args, s.dest, None)
    if path:
        try:
            text = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise SecretError(f"--{s.flag}-file {path}: cannot read: "
                              f"{getattr(e, 'strerror', None) or 'not text'}") from None
        return _checked(s, text, f"--{s.flag}-file {path}")
    if env.get(s.env, "").strip():
        return _checked(s, env[s.env].strip(), f"${s.env}")
    if ask and sys.stdin.isatty():
        return prompt(s)
    return None


def prompt(s: Secret) -> str:
    """Ask for `s` at the terminal, without echo."""
    try:
        text = getpass.getpass(s.prompt).strip()
    except (EOFError, KeyboardInterrupt):
        text = ""
    return _checked(s, text, "typed")


def need(args: argparse.Namespace, s: Secret, env: Mapping[str, str] | None = None) -> str:
    """As get(), but a secret that none of the ways gives is an error saying them."""
    got = get(args, s, env)
    if got is None:
        raise SecretError(f"{s.what} is needed: give it with {s.ways()}")
    return got


def _checked(s: Secret, text: str, source: str) -> str:
    if not text:
        raise SecretError(f"{source}: empty, no {s.what}")
    try:
        return s.check(text)
    except ValueError as e:
        raise SecretError(f"{source}: {e}") from None
