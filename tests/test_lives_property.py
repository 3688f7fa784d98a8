"""Generated device lives (Hypothesis): offline spans, reboots, power cuts, clock jumps both
ways, desired configs (valid or not), refills, cloud restarts and a cloud that lost its data,
run by the firmware's own Device and Syncer against the emulated cloud on the virtual clock
(brewmeter.runs.lives). Once the network heals: no report was refused, the cloud's counters are
the device's, the invoice is the billed brews times the price and they are every brew, and
no order broke the owner's rules (ask first; the monthly cap).

CI runs a fixed, small set (derandomized); BREWMETER_LIVES=N runs N random lives."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from app.supplies import ITEMS
from brewmeter.runs.lives import PRICE_CENTS, Life
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_N = int(os.environ.get("BREWMETER_LIVES", "0"))
YEAR = 365 * 86400

_bad_settings = st.sampled_from([
    {"x" * 250: 1}, {"sync_interval_s": 1}, {"coffee_use": {"mocha": 2}}, {"ask_first": True},
    {"lead_days": "5"}, {"coffee_use": {f"k{i}": 1 for i in range(40)}},
])
_good_settings = st.fixed_dictionaries({}, optional={
    "lead_days": st.integers(1, 60), "coffee_pack": st.integers(20, 500),
    "report_delay_s": st.integers(5, 14400), "auto_coffee": st.integers(0, 1)})

step = st.one_of(
    st.tuples(st.just("day"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("offline"), st.integers(1, 120), st.integers(0, 20)),
    st.tuples(st.just("reboot")),
    st.tuples(st.just("power_cut")),
    st.tuples(st.just("clock"), st.sampled_from([3 * YEAR, 40 * 86400, 3600, -3600,
                                                 -20 * 86400])),
    st.tuples(st.just("config"), st.one_of(_good_settings, _bad_settings)),
    st.tuples(st.just("refill"), st.sampled_from(ITEMS)),
    st.tuples(st.just("cloud_restart")),
    st.tuples(st.just("cloud_loss")),
)


async def _live(steps: list[tuple], cap: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with Life(Path(tmp)) as life:
            rules = {"ask_first": 1, "orders_month": cap}  # the owner's, kept throughout
            assert life.desire(rules)
            for s in steps:
                kind = s[0]
                if kind == "day":
                    await life.day(s[1], online=s[2])
                elif kind == "offline":
                    for _ in range(s[1]):
                        await life.day(s[2], online=False)
                elif kind == "reboot":
                    life.reboot()
                elif kind == "power_cut":
                    life.boot()
                elif kind == "clock":  # a wrong NTP answer at the next boot, then right
                    life.skew = s[1]
                    life.boot()
                    await life.day(3, online=False)
                    life.skew = 0
                elif kind == "config":
                    life.desire({**s[1], **rules})
                elif kind == "refill":
                    life.refill(s[1])
                elif kind == "cloud_restart":
                    await life.cloud_restart()
                else:
                    await life.cloud_loses_data()
                    assert life.desire(rules)
            life.boot()  # NTP right again
            results = await life.heal()
            await life.day(2)  # a day on: the full counters and the config state travel
            results += await life.heal()
            _check(life, results, cap)


def _check(life: Life, results: list[str], cap: int) -> None:
    # No report is refused forever (nor at all: every refusal would repeat).
    refused = [r for r in life.results if r.startswith(("HTTP 4", "HTTP 5"))
               and r != "HTTP 429"]
    assert not refused, refused
    assert results[-1] == "ok", results
    # The cloud's lifetime counters are the device's.
    cloud = life.cloud_device()
    dev = life.device_counters()
    assert cloud["counters"] == dev, (cloud["counters"], dev)
    # Billed: every brew, once, and the invoice is those brews times the price.
    bill = life.invoice()
    assert bill["total_cents"] == bill["brews"] * PRICE_CENTS
    if not life.cloud_lost:
        assert bill["brews"] == dev["brews_total"], (bill["brews"], dev["brews_total"])
    # The owner's rules: ask first (nobody approves here), at most `cap` orders a month.
    orders = cloud["orders"]
    assert not [o for o in orders if o["status"] in ("placed", "shipped", "delivered")]
    months = Counter(o["requested_at"][:7] for o in orders if o["status"] != "declined")
    assert all(n <= cap for n in months.values()), months


@settings(max_examples=_N or 25, derandomize=not _N, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=12), cap=st.integers(0, 3))
@pytest.mark.slow
def test_generated_lives_keep_the_cloud_and_the_device_agreeing(steps, cap):
    asyncio.run(_live(steps, cap))
