"""Stand-in for MicroPython's `micropython` module under CPython."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def const(value: T) -> T:
    return value


def mem_peak() -> int:
    return 0  # CPython has no MicroPython heap; heap figures come from the unix port


kbd_intr_char = 3  # what the last kbd_intr() set (tests read it)


def kbd_intr(c: int) -> None:
    global kbd_intr_char
    kbd_intr_char = c
