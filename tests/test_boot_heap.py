"""The bench's smallest-heap search (brewmeter.bench.boot_heap._smallest): the heap it reports ran
the workload three times in a row and the step below failed at least once, with the band
from the smallest heap seen to run it once. The workload here is a scripted stand-in: the
real one is the emulated board's worst moment (`brewmeter bench --only app_peak`)."""

from __future__ import annotations

import pytest
from brewmeter.bench.boot_heap import _smallest

K = 1024


def scripted(threshold: int, flaky: dict[int, list[bool]] | None = None):
    """fits(heap): heap >= threshold, except that heaps in `flaky` give their outcomes in
    turn; every call is logged."""
    log: list[int] = []
    left = {h: list(v) for h, v in (flaky or {}).items()}

    def fits(heap: int) -> bool:
        log.append(heap)
        if left.get(heap):
            return left[heap].pop(0)
        return heap >= threshold

    return fits, log


def test_a_sharp_threshold_is_confirmed_three_times():
    fits, log = scripted(90 * K)
    assert _smallest(fits) == (92 * K, [92 * K, 92 * K])
    assert log.count(92 * K) == 3 and 88 * K in log  # the step below failed


def test_a_size_that_passed_once_then_failed_is_not_reported():
    # 92 KiB passes in the bisection, then fails: 96 KiB is what holds, the band shows both.
    fits, log = scripted(96 * K, {92 * K: [True, False]})
    assert _smallest(fits) == (96 * K, [92 * K, 96 * K])
    assert log[-3:] == [96 * K] * 3


def test_one_failure_of_the_step_below_is_enough():
    # 84 and 88 KiB fail once each in the bisection (then they would hold): 92 KiB, which
    # held three times, is the answer; the band shows no smaller heap seen to hold.
    fits, log = scripted(84 * K, {84 * K: [False], 88 * K: [False]})
    assert _smallest(fits) == (92 * K, [92 * K, 92 * K])
    assert log.count(92 * K) == 3 and log.count(88 * K) == 1


def test_the_step_below_is_tried_when_the_bisection_never_did():
    # The bisection never tries its lower bound: the answer's step below is then run until
    # it fails, and taken when it holds three times.
    fits, log = scripted(0)
    assert _smallest(fits, lo=32 * K) == (32 * K, [32 * K, 32 * K])
    assert log.count(32 * K) == 3


def test_a_workload_that_never_holds_is_an_error():
    fits, _ = scripted(10**9)
    with pytest.raises(RuntimeError, match="does not run"):
        _smallest(fits)
