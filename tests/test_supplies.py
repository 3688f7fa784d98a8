"""Consumables, forecast, orders and service alerts in the firmware (app/supplies.py,
forecast.py, orders.py, alerts.py) through the Device, as the owner and a field tech see
them; the year-long scenarios with the cloud are in test_replenish.py."""

from __future__ import annotations

import calendar
import json
import random
from datetime import UTC, datetime

import pytest
from app import orders, protocol, sync, synctask
from app.console import Console
from app.device import Device
from app.forecast import IDLE_DAYS, Forecast
from app.meter import BREW
from brewmeter.flashfiles import pin_hash
from brewmeter.onmicropython.replay import tick
from brewmeter.standins import FIRMWARE, settle
from brewmeter.standins.hostfs import DirFS

WALL0 = calendar.timegm((2026, 3, 2, 8, 0, 0))  # a Monday morning
DAY = 86400


class Machine:
    """A Device whose brews are counted as the Meter counts them, with a wall clock."""

    def __init__(self, profile, path, cfg=None):
        self.profile, self.fs = profile, DirFS(path)
        self.wall = WALL0
        self.t = 0  # ticks
        self.boot()
        if cfg:
            assert self.dev.apply_config(1, cfg)

    def boot(self):
        self.dev = Device(self.profile, self.fs)
        self.dev.wall = lambda: self.wall
        self.dev.boot(1, self.t)

    def brew(self, kind="espresso", ms=25000, ml=40):
        m = self.dev.meter
        i = self.profile.kinds.index(kind)
        m.c.brews[i] += 1
        m.c.filter_brews += 1
        m.c.water_ml += ml
        m.c.filter_ml += ml
        m.last_kind, m.last_run_ms = i, ms
        self.dev.event(BREW, i, self.t)
        self.t += 1000
        tick(self.dev, self.t)  # as the sensor task does after every poll

    def days(self, n, per_day, kind="espresso"):
        """n days of `per_day` brews each; the day rolls at midnight as Device.tick sees it."""
        for _ in range(n):
            for _ in range(per_day):
                self.brew(kind)
            if self.wall:  # (0: the clock stays unknown)
                self.wall = (self.wall // DAY + 1) * DAY + 8 * 3600
            self.t += 1000
            tick(self.dev, self.t)

    def orders(self):
        return [e for e in self.dev.outbox.events if e["kind"] == "order_requested"]

    def faults(self):
        return [e["code"] for e in self.dev.outbox.events if e["kind"] == "fault"]

    def console(self, line, pin="246810"):
        con = Console(self.dev, pin=pin_hash(pin, iterations=50))  # as flash.sh provisions it
        return settle(con.feed(line.encode() + b"\n", self.wall, self.t))


@pytest.fixture
def machine(profile, tmp_path):
    return Machine(profile, tmp_path)


def test_forecast_learns_the_pace_and_goes_quiet_when_unused():
    f = Forecast(2)
    f.roll(100, [0, 0])
    f.roll(101, [10, 500])
    assert f.per_day(101) == [10, 500]
    for d in range(102, 109):  # a steady week of 10 a day
        f.roll(d, [10 * (d - 100), 500])
    assert f.per_day(108)[0] == pytest.approx(10)
    assert not f.roll(109, [80, 500])  # an idle day: nothing to save
    assert f.per_day(107 + IDLE_DAYS) is not None  # day 107 was the last with use
    assert f.per_day(108 + IDLE_DAYS) is None  # a week unused: no forecast, no order
    f.roll(120, [80 + 12 * 20, 500])  # back after 12 days: their use spread over them
    assert 0 < f.per_day(120)[0] < 20
    assert Forecast(2, json.loads(json.dumps(f.state()))).state() == f.state()
    assert Forecast(3, f.state()).per_day(120) is None  # another board: learnt afresh


def test_month_of_matches_the_calendar():
    rng = random.Random(1)
    for _ in range(2000):
        wall = rng.randrange(0, 4_102_444_800)  # 1970 .. 2100
        d = datetime.fromtimestamp(wall, UTC)
        assert orders.month_of(wall) == d.year * 12 + d.month - 1


def test_levels_follow_the_counters_and_the_settings(profile, tmp_path):
    m = Machine(profile, tmp_path, {"coffee_pack": 500, "coffee_use": {"espresso": 7,
                                                                      "lungo": 10},
                                    "water_hardness_dh": 20})
    for kind in ("espresso", "lungo", "hot_water"):
        m.brew(kind, ml=200)
    sup, dev = m.dev.supplies, m.dev
    assert sup.level("coffee", dev.config, profile, m.wall, None) == (17, 500, None)
    # 20 dH water spends the 150 L filter (rated at 10 dH) in 75 L, and scales 20x per litre.
    assert sup.level("filter", dev.config, profile, m.wall, None)[:2] == (600, 75_000)
    assert sup.level("descaler", dev.config, profile, m.wall, None)[:2] == (
        600 * 20, 1500 * 1000)
    assert sup.level("tablets", dev.config, profile, m.wall, None)[:2] == (3, 10 * 200)
    # hot water uses no coffee by default; settings can say otherwise
    assert tuple(profile.kinds) == ("espresso", "hot_water", "lungo")
    assert sup.level("coffee", {}, profile, m.wall, None) == (2, 100, None)


def test_an_order_when_the_forecast_falls_below_the_lead_time_and_only_one(machine):
    m = machine  # pack of 100, lead 5 days
    m.days(4, 12)  # 48 used at 12 a day: 4.3 days left after day 4
    [ev] = m.orders()
    assert ev["order"] == "coffee-0" and ev["item"] == "coffee" and ev["ask"] == 0
    assert 0 < ev["days"] < 5
    m.days(3, 12)
    m.boot()  # a reboot forgets nothing: still one order for this pack
    m.days(1, 12)
    assert [e["order"] for e in m.orders()] == ["coffee-0"]
    assert m.dev.supplies.items["coffee"][2] == "requested"
    assert "refilled: cycle 0 closed" in m.console("refill coffee --pin 246810")
    m.days(5, 12)
    assert [e["order"] for e in m.orders()] == ["coffee-0", "coffee-1"]


def test_a_busier_machine_orders_earlier(profile, tmp_path):
    def day_of_order(path, per_day):
        m = Machine(profile, path)
        for day in range(1, 30):
            m.days(1, per_day)
            if m.orders():
                return day, m.dev.meter.c.total_brews()
        return None

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    busy, weekend = day_of_order(tmp_path / "a", 15), day_of_order(tmp_path / "b", 4)
    assert busy[0] < weekend[0]
    assert busy[1] < weekend[1]  # with more coffee left, for its faster pace


def test_doubling_use_mid_cycle_brings_the_order_forward(profile, tmp_path):
    def day_of_order(path, later):
        m = Machine(profile, path, {"coffee_pack": 200})
        for day in range(1, 40):
            m.days(1, 5 if day <= 10 else later)
            if m.orders():
                return day
        return None

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    steady, doubled = day_of_order(tmp_path / "a", 5), day_of_order(tmp_path / "b", 10)
    assert doubled < steady - 3


def test_no_order_for_an_unused_machine_nor_without_a_clock(machine):
    m = machine
    m.days(40, 0)
    assert m.orders() == []  # not even the filter, past its age: nobody uses the machine
    m.wall = 0  # clock unknown
    m.days(20, 12)
    assert m.orders() == []


def test_owner_rules_hold_offline(profile, tmp_path):
    cfg = {"auto_coffee": 0, "orders_month": 1, "ask_first": 1, "coffee_pack": 60,
           "tablets_pack": 1, "clean_brews": 40}
    m = Machine(profile, tmp_path, cfg)
    m.days(10, 12)
    evs = m.orders()
    # coffee is off; tablets (40 brews) and then more tablets would order, but the cap is 1
    assert [e["item"] for e in evs] == ["tablets"] and evs[0]["ask"] == 1
    assert m.dev.supplies.month[1] == 1
    m.console("refill tablets --pin 246810")
    m.days(5, 12)
    assert len(m.orders()) == 1  # still this month: the cap holds
    m.wall = calendar.timegm((2026, 4, 1, 8, 0, 0))
    m.days(2, 12)
    assert [e["order"] for e in m.orders()] == ["tablets-0", "tablets-1"]


def test_cloud_statuses_and_refills_reach_the_device(machine):
    m = machine
    m.days(5, 12)
    [ev] = m.orders()
    sent = [e["id"] for e in m.dev.outbox.events]
    body = json.loads(sync.report(synctask.snapshot(m.dev), 1, m.wall, 0, [], {}))
    assert body["orders"] == {"coffee-0": "requested"}
    synctask.apply_reply(m.dev, json.dumps({"ack": sent, "orders": {"coffee-0": "shipped"}}),
                         sent)
    assert m.orders() == [] and m.dev.supplies.items["coffee"][2] == "shipped"
    assert "coffee" in m.console("consumables") and "shipped" in m.console("consumables")
    # The cloud lost the request: the device asks again, under the same order id.
    synctask.apply_reply(m.dev, b'{"ack": [], "orders": {"coffee-0": "unknown"}}', [])
    assert [e["order"] for e in m.orders()] == ["coffee-0"]
    m.boot()
    assert m.dev.supplies.items["coffee"][2] == "shipped"  # saved
    # The owner says in the cloud that the filter was changed; a retried reply changes
    # nothing more.
    for _ in range(2):
        synctask.apply_reply(m.dev, b'{"ack": [], "refill": {"filter": 0}}', [])
    assert m.dev.meter.c.filters == 1
    assert [e["by"] for e in m.dev.outbox.events if e["kind"] == "filter_changed"] == ["cloud"]


@pytest.mark.parametrize("orders", [', "orders": []', ""])  # an older cloud's [], or none
def test_replies_without_orders_are_fine(machine, orders):
    machine.days(5, 12)
    assert len(machine.orders()) == 1
    sent = [e["id"] for e in machine.dev.outbox.events]
    before = machine.console("consumables")
    reply = '{"ack": ' + json.dumps(sent) + orders + "}"
    assert synctask.apply_reply(machine.dev, reply, sent) is None
    assert machine.dev.outbox.events == []  # what was sent is acknowledged
    assert machine.dev.supplies.items["coffee"][2] == "requested"  # the order stands
    assert machine.console("consumables") == before


@pytest.mark.parametrize("reply", [b'{"ack": [], "orders": ["x"]}',
                                   b'{"ack": [], "orders": {"coffee-0": 3}}',
                                   b'{"ack": [], "refill": {"filter": "0"}}'])
def test_garbled_order_replies_change_nothing(machine, reply):
    before = json.dumps(machine.dev.supplies.items)
    with pytest.raises(sync.BadReply):
        synctask.apply_reply(machine.dev, reply, [])
    assert json.dumps(machine.dev.supplies.items) == before


def test_service_alerts_are_raised_once_per_cycle(profile, tmp_path):
    m = Machine(profile, tmp_path, {"descale_ldh": 100})  # 10 L at 10 dH
    for _ in range(5):
        m.brew(ml=2000)
    assert m.faults() == []  # due (the console says 0 % left), not yet overdue
    m.brew(ml=1000)
    assert m.faults() == ["descale_overdue"]  # 10 % past it
    m.brew(ml=2000)
    assert m.faults() == ["descale_overdue"]
    assert "descale recorded" in m.console("descale done --pin 246810")
    m.wall += 183 * DAY  # the filter's six months are up: due
    m.brew()
    assert "filter_overdue" not in m.faults()
    m.wall += 7 * DAY  # and a week later still not changed
    m.brew()
    assert m.faults().count("filter_overdue") == 1
    assert "filter_overdue age" in m.console("faults")


def test_a_much_longer_brew_is_a_fault(machine):
    m = machine
    for ms in (25000, 24000, 26000, 25000, 25500, 24500):
        m.brew(ms=ms)
    assert m.faults() == []
    m.brew(ms=60000)  # a clogging filter or a failing pump
    assert m.faults() == ["brew_long"]
    assert "espresso 60000 ms, usually 25" in m.console("faults")
    m.brew(ms=26000)
    assert m.faults() == ["brew_long"]


def test_console_lists_consumables_and_refills_need_the_pin(machine):
    m = machine
    m.days(3, 10)
    text = m.console("consumables")
    for name in ("coffee", "filter", "descaler", "tablets"):
        assert name in text
    d = json.loads(m.console("consumables --json"))
    assert d["coffee"]["used"] == 30 and d["coffee"]["capacity"] == 100
    assert d["coffee"]["pct"] == 70 and d["coffee"]["order"] == "none"
    assert d["coffee"]["days"] == pytest.approx(7.0, abs=0.5)  # 70 left at 10 a day
    assert "wrong PIN" in m.console("refill coffee --pin 000000")
    assert "refill ITEM" in m.console("refill beans --pin 246810")
    assert "coffee refilled" in m.console("refill coffee --pin 246810")
    assert json.loads(m.console("consumables --json"))["coffee"]["used"] == 0
    assert m.console("config set coffee_use.lungo 2 --pin 246810").strip() == "coffee_use.lungo = 2"
    assert "no brew kind" in m.console("config set coffee_use.mocha 2 --pin 246810")
    assert protocol.check_settings({"coffee_use": {"lungo": 2}}, m.profile.kinds) is None


_ON_BOTH = """
import json
from app.meter import BREW
from app.device import Device
from app.profile import parse
from app.journal import DeviceFS

p = parse(open(BOARD).read(), BOARD)
W = [WALL0]


def boot():
    d = Device(p, DeviceFS(), root=ROOT)
    d.wall = lambda: W[0]
    d.boot(1, 0)
    return d


d = boot()
t = 0
for day in range(9):
    for k in range(12 + day):
        c = d.meter.c
        c.brews[0] += 1
        c.water_ml += 40
        c.filter_ml += 40
        d.meter.last_kind, d.meter.last_run_ms = 0, 25000 + 100 * k
        d.event(BREW, 0, t)
        t += 1000
        if d.count_tick(t):  # as the sensor and day tasks do
            d.day_tick(t)
    W[0] += 86400
    t += 1000
    if d.count_tick(t):  # as the sensor and day tasks do
        d.day_tick(t)
    if day in (3, 6):
        d = boot()  # the state and the rates come back from the files
out = {"orders": [e["order"] for e in d.outbox.events if e["kind"] == "order_requested"],
       "status": d.supplies.items["coffee"][2], "rates": d.forecast.state(),
       "supplies": d.supplies.report(d.config, p, W[0], d.per_day(W[0]))}
print("RESULT " + json.dumps(out))
"""

_LOST = """
import os
for i in (0, 1):
    os.remove(ROOT + "/state/sup.%d" % i)  # the consumables' record lost: a new era
r = boot()
print("RESULT " + json.dumps({"reset": [boot().supplies.items["coffee"][0], r.faults]}))
"""


def test_orders_and_rates_persist_alike_under_micropython(tmp_path):
    """The same week of brews and two reboots, on the MicroPython unix port and under CPython:
    one order, the same forecast, the same levels."""
    from brewmeter import unixport
    from brewmeter.profiles import board_path

    def code(root):
        root.mkdir()
        return (f"BOARD = {str(board_path('emulator'))!r}\nWALL0 = {WALL0}\n"
                f"ROOT = {str(root)!r}\n" + _ON_BOTH + _LOST)

    printed = {}
    exec(code(tmp_path / "cpython"), {"print": lambda s: printed.update(json.loads(s[7:]))})
    out = unixport.run(["-c", f"import sys; sys.path.insert(0, {str(FIRMWARE)!r})\n"
                  + code(tmp_path / "micropython")])
    on_mp = {}
    for line in out.split("RESULT ")[1:]:
        on_mp.update(json.loads(line))
    assert on_mp["orders"] == ["coffee-0"] and on_mp["status"] == "requested"
    assert on_mp["reset"] == [4 << 16, [["supplies_reset", f"cycles from {4 << 16}"]]]
    assert on_mp == printed


def test_an_order_reaches_the_merchant_from_micropython(tmp_path):
    """The firmware on the MicroPython unix port requests its order over a real socket; the
    cloud places it, and the device hears so in the reply and keeps it across a reboot."""
    from brewmeter import unixport
    from brewmeter.cloud import cloud_thread
    from brewmeter.profiles import board_path

    dev, key = "bm-mporder", "7c" * 32
    (tmp_path / "fs").mkdir()
    sync_code = f"""
import asyncio
from app import wallclock
from app.synctask import wire


class Up:
    async def up(self):
        pass


wallclock.set_unix(W[0])  # as NTP would: no lookup of a public server here
s = wire(d, {{"device_id": {dev!r}, "key": {key!r}, "cloud_url": URL, "ntp": ""}}, Up(),
         wall=lambda: W[0])
print("SYNC", asyncio.run(s.sync_once()), d.supplies.items["coffee"][2])
print("AFTER", boot().supplies.items["coffee"][2])
"""
    with cloud_thread(devices=[(dev, key)]) as cloud:
        out = unixport.run(["-c", f"import sys; sys.path.insert(0, {str(FIRMWARE)!r})\n"
                      f"BOARD = {str(board_path('emulator'))!r}\nWALL0 = {WALL0}\n"
                      f"ROOT = {str(tmp_path / 'fs')!r}\nURL = {cloud.url!r}\n"
                      + _ON_BOTH + sync_code])
        orders = cloud.ledger.orders(dev)
    assert "SYNC ok placed" in out and "AFTER placed" in out
    assert [(o["order"], o["status"]) for o in orders] == [("coffee-0", "placed")]


def test_the_supplies_record_round_trips_and_stays_inline(machine):
    """Cycles, marks, orders, the forecast and brew times in one record of at most 128
    bytes with its header (inline in littlefs metadata: a rewrite is no block erase)."""
    from app.alerts import BrewTimes
    from app.startup import unpack_supplies
    from app.supplies import Supplies, pack_supplies

    m = machine
    m.days(6, 12)
    m.console("refill tablets --pin 246810")
    dev = m.dev
    data = pack_supplies(dev.supplies, dev.forecast, dev.brew_times)
    sup, fc, bt = unpack_supplies(data, 3)
    assert sup == json.loads(json.dumps({"it": dev.supplies.items, "mo": dev.supplies.month}))
    assert Forecast(4, fc).per_day(fc[0]) == pytest.approx(dev.forecast.per_day(fc[0]),
                                                           rel=1e-3)
    assert BrewTimes(3, bt).state() == dev.brew_times.state()
    assert Supplies(dev.meter.c, m.profile.kinds, sup).items["coffee"][2] == "requested"
    # the largest board (4 kinds): header 3 + CRC 4 bytes around it
    assert len(pack_supplies(Supplies(dev.meter.c, ("a", "b", "c", "d")), Forecast(5),
                         BrewTimes(4))) + 7 <= 128
    assert unpack_supplies(data, 4) is None and unpack_supplies(data[:-1], 3) is None


def test_a_lost_supplies_file_starts_fresh_cycles_and_keeps_counting(machine):
    m = machine
    m.days(3, 10)
    m.console("refill coffee --pin 246810")
    m.console("refill tablets --pin 246810")
    before = {n: it[0] for n, it in m.dev.supplies.items.items()}
    assert before == {"coffee": 1, "filter": 0, "descaler": 0, "tablets": 1}
    for i in (0, 1):
        (m.fs.root / "state" / f"sup.{i}").unlink()
    m.boot()
    assert m.dev.supplies.level("coffee", {}, m.profile, m.wall, None)[0] == 0
    assert m.dev.meter.c.total_brews() == 30
    assert (m.fs.root / "state" / "sup.0").exists()  # the fresh cycles are saved
    # A new era (this boot, the 2nd): no order id of before can come again; the filter's
    # cycle is the counters' own. The owner is told.
    era = 2 << 16
    assert {n: it[0] for n, it in m.dev.supplies.items.items()} == {
        "coffee": era, "filter": 0, "descaler": era, "tablets": era}
    assert m.faults() == ["supplies_reset"]
    assert ("supplies_reset", f"cycles from {era}") in m.dev.faults
    assert "supplies_reset" in m.console("faults")
    m.console("refill coffee --pin 246810")
    m.boot()  # the era is kept with the cycles; no reset, no fault this time
    assert m.dev.supplies.cycle("coffee") == era + 1 and m.dev.supplies.cycle("descaler") == era
    assert m.dev.faults == []


def test_a_409_moves_the_first_eras_cycles_on_and_later_eras_follow_the_seq_era(machine):
    """A 409 to a device still in the first era: its flash was lost and its boot count began
    again, so the ids of before would come again; later eras start from the seq era."""
    m = machine
    m.days(6, 12)
    assert m.orders() and m.orders()[0]["order"] == "coffee-0"
    m.dev.seq_floor(100)  # the cloud had seqs up to era 99
    assert m.dev.supplies.cycle("coffee") == 100 << 16
    assert m.dev.supplies.cycle("filter") == 0  # the counters' own
    assert m.dev.supplies.items["coffee"][2] == "requested"  # the request goes on, renamed
    assert synctask.open_orders(m.dev.supplies) == {f"coffee-{100 << 16}": "requested"}
    assert m.faults() == ["supplies_reset"]
    m.dev.seq_floor(200)  # a later 409: the cycles are no longer the first era's
    assert m.dev.supplies.cycle("coffee") == 100 << 16
    for i in (0, 1):
        (m.fs.root / "state" / f"sup.{i}").unlink()
    m.boot()  # boot 2 with the floor: seq era 2 + 199
    assert m.dev.supplies.cycle("coffee") == 201 << 16


def test_another_number_of_brew_kinds_starts_a_new_era(machine, profile):
    from app.profile import parse
    from brewmeter.profiles import board_path

    m = machine
    m.days(2, 10)
    text = json.loads(board_path("emulator").read_text())
    del text["inputs"]["hot_water"]
    m.profile = parse(json.dumps(text), "two-kinds.json")
    m.boot()
    assert m.dev.supplies.cycle("coffee") == 2 << 16
    assert m.faults() == ["supplies_reset"]


def test_a_supplies_record_from_before_the_era_reads_as_era_0(machine):
    from app.startup import unpack_supplies
    from app.supplies import pack_supplies

    m = machine
    m.days(6, 12)
    m.console("refill coffee --pin 246810")
    dev = m.dev
    data = pack_supplies(dev.supplies, dev.forecast, dev.brew_times)
    old = unpack_supplies(data[:-4], 3)  # the same record as the firmware before wrote it
    assert old == unpack_supplies(data, 3) and old is not None
    assert old[0]["it"]["coffee"][0] == 1
    dev.supplies.items["coffee"][0] = (7 << 16) + 3
    back = unpack_supplies(pack_supplies(dev.supplies, dev.forecast, dev.brew_times), 3)
    assert back is not None and back[0]["it"]["coffee"][0] == (7 << 16) + 3
