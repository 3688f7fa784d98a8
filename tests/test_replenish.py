"""Replenishment over simulated months, as the owner lives it: the firmware's Device and
Syncer under CPython on the virtual clock, reporting over HTTP on 127.0.0.1 to the emulated
cloud as merchant (brewmeter.runs.household). The device-level rules are in test_supplies.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from statistics import mean

import pytest
from app.orders import month_of
from app.supplies import ITEMS
from brewmeter.profiles import load_profile
from brewmeter.runs import household
from brewmeter.runs.household import Outcome, Plan
from brewmeter.runs.usage import START_WALL


def run(plan: Plan) -> Outcome:
    return asyncio.run(household.run(load_profile("emulator"), plan))


def day_of(wall: int) -> int:
    return (wall - START_WALL) // 86400


def assert_one_order_per_cycle(out: Outcome) -> None:
    """Every cycle that ran its course had exactly one order (and the current one at most
    one); no order id was ever requested for a cycle that did not exist."""
    for name in ITEMS:
        cycles = [o["cycle"] for o in out.orders if o["item"] == name]
        used_up = out.refills[name]
        assert used_up >= 1, name
        assert sorted(cycles) in (list(range(used_up)), list(range(used_up + 1))), name
    assert {e["order"] for e in out.requests} == {o["order"] for o in out.orders}


@pytest.mark.slow
def test_a_year_online_once_a_day_orders_each_cycle_once_and_nothing_runs_out():
    out = run(Plan(days=365, seed=3, online=lambda day, hour: hour == 12))
    assert_one_order_per_cycle(out)
    assert sum(out.stockouts.values()) == 0
    assert out.refills["coffee"] > 20  # the office drinks a pack of 100 every ~9 days
    assert all(o["status"] == "delivered" for o in out.orders
               if o["cycle"] < out.supplies[o["item"]]["cycle"])
    assert sum(out.alerts.values()) == 0  # the owner kept up: nothing went overdue


@pytest.mark.slow
def test_no_double_order_across_100_power_cuts_and_network_faults():
    out = run(Plan(days=365, seed=5, power_cuts=100, net_faults=0.3))
    assert out.power_cuts == 100
    assert_one_order_per_cycle(out)
    # A cut or a lost reply may send a request again: never under a second order id.
    assert len(out.requests) >= len(out.orders)
    assert sum(out.stockouts.values()) == 0


@pytest.mark.slow
def test_caps_and_ask_first_hold_offline_and_an_idle_month_orders_nothing():
    offline = range(30, 75)
    idle = range(100, 140)
    out = run(Plan(days=170, seed=2, settings={"ask_first": 1, "orders_month": 2},
                   online=lambda day, hour: day not in offline,
                   usage=lambda day: 0.0 if day in idle else 1.0))
    per_month = Counter(month_of(e["wall"]) for e in out.requests)
    assert per_month and max(per_month.values()) <= 2
    assert any(day_of(e["wall"]) in offline for e in out.requests)  # decided offline
    assert all(o["ask"] for o in out.orders)
    # Each waited for the owner's approval (six hours after it reached the cloud).
    assert all(o["placed_at"] > o["requested_at"] for o in out.orders if o["placed_at"])
    # A week after the last brew the forecast goes quiet: no order until brews resume.
    quiet = range(idle.start + 7, idle.stop)
    assert not [e for e in out.requests if day_of(e["wall"]) in quiet]
    # The cap costs coffee: what the owner had to buy elsewhere is counted.
    assert out.stockouts["coffee"] > 0


@pytest.mark.slow
def test_doubled_use_brings_the_orders_forward():
    out = run(Plan(days=240, seed=4, usage=lambda day: 1.0 if day < 120 else 2.0,
                   settings={"orders_month": 20}))
    coffee = [e for e in out.requests if e["item"] == "coffee"]
    before = [e["pct"] for e in coffee if day_of(e["wall"]) < 120]
    after = [e["pct"] for e in coffee if day_of(e["wall"]) >= 130]
    # Ordered at the same lead time, so with twice the pace, with about twice as much left.
    assert mean(after) > 1.5 * mean(before)
    assert sum(out.stockouts.values()) == 0


def test_ask_first_never_approved_means_nothing_ships():
    out = run(Plan(days=40, seed=1, settings={"ask_first": 1}, approve_after_h=None))
    assert out.orders and {o["status"] for o in out.orders} == {"needs_approval"}
    assert out.supplies["coffee"]["cycle"] >= 2 and out.stockouts["coffee"] >= 2
