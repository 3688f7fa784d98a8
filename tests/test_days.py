"""Brews billed to the day they happened: day buckets on the device, offline days, undated
brews before the clock is known, and the emulated cloud's per-day ledger and invoice."""

from __future__ import annotations

from app.counters import Counters
from app.days import Days
from app.device import Device
from app.meter import BREW

DAY = 86400
T = 20_000 * DAY  # 2024-10-04 00:00 UTC


def test_today_yesterday_and_offline_history():
    c = Counters()
    d = Days(c, boot=1)
    for t in (T + 10, T + 20, T + DAY + 5):
        d.brew(t)
    assert (c.prev_day, c.prev_brews, c.day, c.day_brews) == (20_000, 2, 20_001, 1)
    assert d.history == [] and not d.unsaved  # midnight cost no extra state
    d.brew(T + 3 * DAY)  # offline two days: yesterday's bucket is still unacknowledged
    assert d.history == [[20_000, 2]] and d.unsaved
    assert d.buckets() == [{"day": 20_000, "brews_total": 2}, {"day": 20_001, "brews_total": 1},
                           {"day": 20_003, "brews_total": 1}]
    d.acked(d.buckets())
    assert d.history == [] and c.prev_day == 0  # today stays: it still grows
    assert d.buckets() == [{"day": 20_003, "brews_total": 1}]


def test_undated_brews_belong_to_their_boot_until_sent():
    c = Counters()
    d = Days(c, boot=7)
    d.brew(0)
    d.brew(0)
    d.brew(T)  # NTP answered: dated from now on, never moved between the two
    assert d.buckets() == [{"day": 20_000, "brews_total": 1},
                           {"boot": 7, "at_ms": 0, "brews_total": 2}]
    d2 = Days(c, boot=8)  # a reboot before the cloud had them: kept as history
    assert d2.history == [[-7, 2]] and c.undated_brews == 0
    d2.acked(d2.buckets())
    assert d2.history == []


def test_device_keeps_days_across_reboot_and_offline_midnights(profile, tmp_path):
    from brewmeter.onmicropython.replay import tick
    from brewmeter.standins.hostfs import DirFS

    fs = DirFS(tmp_path)
    now = [T + 8 * 3600]
    d = Device(profile, fs)
    d.wall = lambda: now[0]
    d.boot(1, 0)
    for _ in range(3):
        d.meter.c.brews[0] += 1
        d.event(BREW, 0, 0)
    now[0] += 2 * DAY  # two midnights offline; the tick notices
    tick(d, 5000)
    d2 = Device(profile, fs)  # power cut after that
    d2.wall = lambda: now[0]
    d2.boot(1, 0)
    assert d2.days.buckets() == [{"day": 20_000, "brews_total": 3}]
    d2.meter.c.brews[0] += 1
    d2.event(BREW, 0, 0)  # the first brew of the new day rolls it again from the clock
    assert d2.days.buckets() == [{"day": 20_000, "brews_total": 3},
                                 {"day": 20_002, "brews_total": 1}]


def test_a_power_cut_at_boot_leaves_no_brew_without_its_day_bucket(profile, tmp_path):
    import pytest
    from brewmeter.standins.hostfs import DirFS

    fs = DirFS(tmp_path)
    d = Device(profile, fs)  # the clock never known: brews go to the boot's undated bucket
    d.boot(1, 0)
    for _ in range(3):
        d.meter.c.brews[0] += 1
        d.event(BREW, 0, 0)

    class PowerCut(Exception):
        pass

    d2 = Device(profile, fs)  # the next boot moves them into the history: two writes
    writes = []
    for store in (d2.store, d2.state):
        def write(name, payload, write=store.write):
            writes.append(name)
            if len(writes) > 1:
                raise PowerCut  # the power fails after the boot's first write
            write(name, payload)

        store.write = write
    with pytest.raises(PowerCut):
        d2.boot(1, 0)
    d3 = Device(profile, fs)
    d3.boot(1, 0)
    assert d3.meter.c.total_brews() == 3
    assert d3.days.buckets() == [{"boot": 1, "at_ms": 0, "brews_total": 3}]


def test_a_clock_correction_moves_what_that_clock_dated_and_nothing_else():
    from app.device import redated
    from app.orders import month_of
    from app.supplies import MONTH_S

    ahead = T + 3 * 365 * DAY  # a wrong NTP answer, three years ahead
    fit = ahead - 7200  # a filter fitted two powered hours before that clock was set
    got = redated(ahead, T, [
        (fit, 0, 1),  # dated this boot (at boot: never): moves
        (T - 30 * DAY, T - 30 * DAY, 1),  # an earlier boot's, as at boot: stays
        (0, 0, 1),  # never dated: stays
        (ahead // DAY, T // DAY - 1, DAY),  # the forecast's day, rolled by that clock
        (month_of(ahead), month_of(T), MONTH_S),  # the orders' month
    ])
    assert got == [T - 7200, T - 30 * DAY, 0, T // DAY, month_of(T)]
    # A small correction moves seconds, not days: (value, at boot) 10 minutes either way
    assert redated(T, T - 600, [(T + 5, 0, 1), (T // DAY, 1, DAY)]) == [T - 595, T // DAY]
    assert redated(T, T + 600, [(T + 5, 0, 1), (T // DAY, 1, DAY)]) == [T + 605, T // DAY]


async def test_offline_days_are_billed_to_their_days(profile, tmp_path):
    from datetime import date

    from app.synctask import wire
    from brewmeter.cloud import CloudServer
    from brewmeter.onmicropython.replay import tick
    from brewmeter.standins.hostfs import DirFS

    class Up:
        async def up(self) -> None:
            return None

    key = "ab" * 32
    d = Device(profile, DirFS(tmp_path))
    now = [T + 9 * 3600]
    d.wall = lambda: now[0]
    d.boot(1, 0)
    per_day = [4, 0, 7, 2]
    for n in per_day:
        for _ in range(n):
            d.meter.c.brews[1] += 1
            d.event(BREW, 1, 0)
        now[0] += DAY
        tick(d, 1000 * (now[0] - T))
    async with CloudServer(tmp_path / "ledger.db", devices=[("bm-days1", key)]) as cloud:
        cloud.ledger.set_plan("bm-days1", {"price_per_brew": 0.35})
        s = wire(d, {"device_id": "bm-days1", "key": key, "cloud_url": cloud.url, "ntp": ""},
                 Up(), wall=lambda: now[0])
        import app.wallclock as wc

        wc.set_unix(now[0])
        try:
            assert await s.sync_once() == "ok"
        finally:
            wc.synced = False
        got = cloud.ledger.days("bm-days1", date(2024, 10, 4), date(2024, 10, 7))
        bill = cloud.ledger.invoice("bm-days1", date(2024, 10, 1), date(2024, 10, 31))
    brews = {day["day"] - 20_000: day["brews_total"] for day in got["days"]}
    assert brews == {i: n for i, n in enumerate(per_day) if n}, got
    assert not any(day["estimated"] for day in got["days"])
    assert bill["total_cents"] == 13 * 35, bill
    assert d.days.history == []


def test_history_past_its_bound_is_folded_never_dropped():
    from app.days import KEEP
    from app.protocol import MAX_DAYS

    c = Counters()
    d = Days(c, boot=3)
    for i in range(400):  # 400 days offline, a brew or two each day
        for _ in range(1 + i % 2):
            d.brew(T + i * DAY + 3600)
    assert len(d.history) == KEEP + 1 and d.history[0][0] == 0  # the folded bucket leads
    every = []
    while True:  # pages, oldest first, as the syncer sends them while `more`
        page = d.buckets()
        assert len(page) <= MAX_DAYS
        every += page
        d.acked(page)
        if not d.more:
            break
    total = sum(b["brews_total"] for b in every)
    assert total == sum(1 + i % 2 for i in range(400))  # every brew is in some bucket
    fold = [b for b in every if "fold" in b]
    assert len(fold) == 1 and fold[0]["fold"] == 3 * 256
    dated = [b["day"] for b in every if "day" in b]
    # The first days offline are kept apart (the cloud may hold part of them); the later
    # ones are folded, up to the day before yesterday.
    assert dated == list(range(20_000, 20_000 + KEEP)) + [20_398, 20_399]
    assert fold[0]["last"] == 20_397


def test_a_bucket_in_the_last_report_is_not_folded():
    from app.days import KEEP

    c = Counters()
    d = Days(c, boot=1)
    for i in range(KEEP + 2):
        d.brew(T + i * DAY)
    d.buckets()  # sent; the reply is lost; offline one more day
    oldest = d.history[0][0]
    d.brew(T + (KEEP + 2) * DAY)
    # the cloud may have any in the report: folding one would double it; the newest
    # (yesterday's then) goes, since all were sent
    assert d.history[0] == [0, 1, 256, 20_000 + KEEP] and d.history[1][0] == oldest


def test_clock_years_ahead_then_right_folds_onto_the_real_day():
    c = Counters()
    d = Days(c, boot=1)
    ahead = T + 3 * 365 * DAY
    for _ in range(5):
        d.brew(ahead)  # a wrong clock, far ahead
    d.brew(T + 2 * DAY)  # the right one: the future day's brews happened before now
    assert (c.day, c.day_brews) == (20_002, 1)
    assert d.buckets() == [{"fold": 256, "last": 20_002, "brews_total": 5},
                           {"day": 20_002, "brews_total": 1}]


def test_a_small_step_back_keeps_counting_on_the_day():
    c = Counters()
    d = Days(c, boot=1)
    d.brew(T + DAY + 60)
    d.brew(T + DAY - 60)  # NTP moved the clock two minutes back over midnight
    assert d.buckets() == [{"day": 20_001, "brews_total": 2}]


def test_a_step_back_before_a_day_the_cloud_confirmed_is_the_wrong_clock():
    c = Counters()
    d = Days(c, boot=1)
    d.brew(T + 2 * DAY)
    d.confirm(20_002)  # the cloud's Date agreed with our clock on that day
    d.brew(T - 18 * DAY)  # a reboot's NTP 20 days behind: that clock is the wrong one
    assert d.buckets() == [{"day": 20_002, "brews_total": 2}]  # nothing folded, no loss
    assert d.unsaved  # the confirmed day is kept with the history
