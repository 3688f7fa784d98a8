"""Counts survive any power cut: the sweep cuts the power at every flash program/erase of a
scripted day, with and without a torn last program, on real littlefs, and checks the ground
truth after each recovery. Plus the same on MicroPython's own littlefs for a sample of cuts."""

from __future__ import annotations

import pytest
from app.device import FLUSH_S
from brewmeter.harness import board_path
from brewmeter.runs import sweep

WINDOW_MS = FLUSH_S * 1000 + 2500


@pytest.fixture(scope="module")
def events(profile_module):
    return sorted(sweep.day(profile_module).events)


@pytest.fixture(scope="module")
def profile_module():
    from brewmeter.harness import load_profile

    return load_profile("emulator")


def test_the_day_is_a_real_workload(profile_module, events):
    truth = sweep.day(profile_module).truth
    assert truth.total_brews >= 20 and len([k for k in truth.brews if truth.brews[k]]) == 3
    assert truth.rinses >= 3
    ops, _ = sweep.count_ops(profile_module, events)
    assert ops >= 40  # enough flash operations for the sweep to mean something


def test_every_cut_point_under_cpython_littlefs(profile_module, events):
    s = sweep.sweep_cpython(profile_module, events, WINDOW_MS)
    ops, _ = sweep.count_ops(profile_module, events)
    assert s.cuts == 2 * ops  # every index, torn and not
    assert s.outbox_checked > 0  # some cuts came after the filter-change event was saved
    assert s.failures == []
    assert s.ok


def test_sampled_cut_points_under_micropython_littlefs(profile_module, events):
    s = sweep.sweep_micropython(board_path("emulator"), profile_module, events, WINDOW_MS,
                                sample=40)
    assert s.cuts >= 40
    assert s.failures == []


def test_the_checks_catch_a_lost_and_a_doubled_brew():
    # The checker itself must fail on bad recoveries, or a green sweep means nothing.
    base = {"cut_event": 3, "durable": [5, 1, 100, 1000], "ram": [6, 1, 150, 2000],
            "after": [2, 0, 10, 10], "durable_outbox": [1], "ram_outbox": [1, 2]}
    s = sweep.Summary()
    sweep.check({**base, "recovered": [4, 1, 100, 1000], "final": [6, 1, 0, 0],
                 "recovered_outbox": [1]}, WINDOW_MS, s)
    sweep.check({**base, "recovered": [7, 1, 150, 2000], "final": [9, 1, 0, 0],
                 "recovered_outbox": [1]}, WINDOW_MS, s)
    sweep.check({**base, "recovered": [6, 1, 150, 2000], "final": [8, 1, 0, 0],
                 "recovered_outbox": []}, WINDOW_MS, s)
    sweep.check({**base, "recovered": [5, 1, 100, 1000], "final": [8, 1, 0, 0],
                 "recovered_outbox": [1]}, WINDOW_MS, s)
    assert (s.lost, s.doubled, s.outbox_lost, s.wrong_after) == (1, 1, 1, 1)
    assert not s.ok
