"""Lines for fuzzing the service console that know its grammar: every command with its words
and flags mutated (missing, doubled, out of order, alone), numbers huge and negative, PINs of
100 digits, non-ASCII, terminal escape sequences, and random bytes. Used by the tests against
the console's core under CPython and over the emulated board's serial port."""

from __future__ import annotations

import random
from pathlib import Path

from brewmeter.profiles import load_profile

# The grammar (app/console.py and app/service.py): words, then flags.
READS = [["help"], ["status"], ["counters"], ["filter"], ["events"], ["events", "3"],
         ["faults"], ["config"], ["consumables"]]
ACTIONS = [["refill", "coffee"], ["refill", "filter"], ["refill", "descaler"],
           ["refill", "tablets"], ["filter", "change"], ["descale", "done"],
           ["config", "set", "sync_interval_s", "900"], ["config", "set", "coffee_use.lungo", "9"],
           ["sync"], ["reboot"]]
NUMBERS = ["0", "-1", "-999999999999", "4294967296", "9" * 40, "1e9", "0x10", "3.5", "",
           "-0", "+7"]
ESCAPES = ["\x1b[A", "\x1b[2J", "\x1b]0;title\x07", "\x1bOP", "\x1b[999;999H", "\x1b"]
NON_ASCII = ["caf\u00e9", "\u2615", "\u0000", "\ufeff", "\udcff", "\u00ff" * 3]
FLAGS = ["--json", "--pin", "--", "-", "--JSON", "--pin="]


def _pin(rng: random.Random) -> str:
    return rng.choice(["0000", "1" * 100, "", "-2468", "24 68", "9" * 9, "abcd", "2468x"])


def grammar_line(rng: random.Random) -> str:
    """One mutated command line (without the line end). Never the right PIN: a fuzzed
    `reboot` must not pass."""
    if rng.random() < 0.5:
        words = list(rng.choice(READS))
        if rng.random() < 0.5:
            words.append("--json")
    else:
        words = list(rng.choice(ACTIONS))
        words += ["--pin", _pin(rng)]
        if rng.random() < 0.3:
            words.append("--json")
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(9)
        i = rng.randrange(len(words)) if words else 0
        if op == 0 and words:  # a word or flag missing
            del words[i]
        elif op == 1 and words:  # doubled
            words.insert(i, words[i])
        elif op == 2 and len(words) > 1:  # out of order
            j = rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
        elif op == 3:  # a number where a number (or anything) goes
            words.insert(i, rng.choice(NUMBERS))
        elif op == 4:
            words.insert(i, rng.choice(FLAGS))
        elif op == 5 and words:
            words[i] = words[i] + rng.choice(ESCAPES + NON_ASCII)
        elif op == 6:
            words.insert(i, rng.choice(ESCAPES + NON_ASCII))
        elif op == 7:  # flags alone: the line is nothing but them
            words = [rng.choice(FLAGS) for _ in range(rng.randrange(1, 3))]
        elif words:
            words[i] = words[i].upper()
    return " ".join(words)


def special_lines() -> list[str]:
    """The lines every run tries, before the random ones."""
    return ["--json", "--json --json", "--pin", "--pin 2", "events --json -5",
            "events 99999999999999999999", "events -1", "events " + "9" * 100,
            "config set", "config set --pin", "config set sync_interval_s --pin",
            "config set sync_interval_s " + "9" * 100 + " --pin 0000",
            "refill --pin", "refill", "reboot --pin " + "1" * 100, "\x1b[A\x1b[B",
            "caf\u00e9 --json", "   ", "\t--json\t"]


def encode(line: str, rng: random.Random) -> bytes:
    end = rng.choice([b"\r", b"\n", b"\r\n"])
    return line.encode("utf-8", "surrogateescape") + end


def random_bytes(rng: random.Random, n: int = 64) -> bytes:
    """Random bytes, without Ctrl-C and Ctrl-D (the REPL's), ending a line."""
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, n)))
    return data.replace(b"\x03", b"").replace(b"\x04", b"") + b"\r"


def inputs(seed: int, n: int) -> list[bytes]:
    """The special lines, then `n` grammar lines with some random bytes among them."""
    rng = random.Random(seed)
    out = [encode(x, rng) for x in special_lines()]
    for _ in range(n):
        out.append(random_bytes(rng) if rng.random() < 0.15 else encode(grammar_line(rng), rng))
    return out


def fuzz_core(n: int = 3000, seed: int = 11, pin: str | None = "2468") -> list[tuple[bytes, str]]:
    """Feed the console's core (CPython) the fuzz; [(input, error)] for each input that
    raised instead of answering (or that only the console's last resort caught)."""
    import tempfile

    from app.console import Console
    from app.device import Device

    from brewmeter.standins import settle
    from brewmeter.standins.hostfs import DirFS

    failures = []
    with tempfile.TemporaryDirectory() as d:
        dev = Device(load_profile("emulator"), DirFS(Path(d)))
        dev.boot(1, 0)
        con = Console(dev, status=lambda: {"fw": "x"}, pin=pin)
        for data in inputs(seed, n):
            try:
                out = settle(con.serve(data, 0, 0))
                if b"error: internal:" in out:  # caught by the console's last resort
                    failures.append((data, out.decode(errors="replace")))
            except Exception as e:  # noqa: BLE001 - what the fuzz is looking for
                failures.append((data, f"{type(e).__name__}: {e}"))
                con = Console(dev, status=lambda: {"fw": "x"}, pin=pin)
            con.pending = None
    return failures
