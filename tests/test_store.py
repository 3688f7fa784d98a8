"""Durable storage: A/B copies with CRC, recovery, full flash, newer formats, the outbox."""

from __future__ import annotations

import errno
import os
import struct

import pytest
from app import journal as store_mod
from app.counters import Counters
from app.device import Device
from app.journal import FORMAT, NewerFormat, Store
from app.meter import BREW
from app.outbox import MAX_EVENTS, Outbox
from app.startup import load_counters
from app.synctask import usage
from brewmeter.onmicropython.replay import tick
from brewmeter.scenario import Script, play
from brewmeter.standins.hostfs import DirFS


@pytest.fixture
def fs(tmp_path):
    return DirFS(tmp_path)


def _counters(seed: int) -> Counters:
    c = Counters()
    c.brews = [seed, 2 * seed, 3, 2**32 - 1]
    c.pump_ms = 10 * (2**32 - 1 - seed)  # beyond 32 bits of ms: years of pump time
    c.stuck_runs = 65535
    c.water_ml, c.filter_fit_wall, c.resets = 123_456 + seed, 1_800_000_000, [0, 5, 1, 0, 0, 9]
    return c


def test_counters_round_trip_in_one_inline_sized_file(fs):
    s = Store(fs, "/counts")
    c = _counters(7)
    s.save_counters(c)
    assert load_counters(Store(fs, "/counts")).__dict__ == c.__dict__
    size = (fs.root / "counts" / "counters.0").stat().st_size
    assert size <= 128  # stays inline in littlefs metadata: no block erase per rewrite


def test_writes_alternate_and_the_newest_good_copy_wins(fs):
    s = Store(fs, "/counts")
    for i in range(5):
        s.save_counters(_counters(i))
    assert load_counters(Store(fs, "/counts")).brews[0] == 4
    # Damage the newest copy: the load falls back to the one before and says so.
    newest = fs.root / "counts" / f"counters.{s._seq['counters'][1]}"
    data = bytearray(newest.read_bytes())
    data[10] ^= 0x04
    newest.write_bytes(bytes(data))
    s2 = Store(fs, "/counts")
    assert load_counters(s2).brews[0] == 3
    assert s2.recovered == ["counters"]
    s2.save_counters(_counters(9))  # the next write replaces the damaged copy
    assert load_counters(Store(fs, "/counts")).brews[0] == 9


def _three_brews_saved(profile, fs):
    """A device's three brews saved: (the counters' seq, the copy of them written last)."""
    d = Device(profile, fs)
    d.boot(1, 0)
    for n in range(3):
        d.meter.c.brews[0] += 1
        d.event(BREW, 0, 1000 * n)
    seq, idx = d.store._seq["counters"]
    return seq, fs.root / "counts" / f"counters.{idx}"


def _next_brew_saved_whole(profile, fs, d2):
    """A brew on the recovered device `d2` replaces the damaged copy: the next boot has it
    all, with no fault."""
    d2.meter.c.brews[0] += 1
    d2.event(BREW, 0, 5000)
    d3 = Device(profile, fs)
    d3.boot(1, 0)
    assert d3.meter.c.brews[0] == 3 and d3.faults == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "garbage", "huge"])
def test_damaged_state_file_at_boot_counts_on_from_last_good(profile, fs, damage):
    seq, victim = _three_brews_saved(profile, fs)
    if damage == "flip":
        b = bytearray(victim.read_bytes())
        b[20] ^= 0x80
        victim.write_bytes(bytes(b))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:30])
    elif damage == "delete":
        victim.unlink()
    elif damage == "huge":  # its header intact, grown past any copy we write: never read
        victim.write_bytes(victim.read_bytes() + bytes(1 << 20))
    else:  # random bytes under a header that reads as the newest copy's (see the next test)
        victim.write_bytes(struct.pack("<BH", FORMAT, (seq + 1) & 0xFFFF) + os.urandom(100))
    d2 = Device(profile, fs)
    d2.boot(1, 0)
    assert d2.meter.c.brews[0] == 2  # the last good copy: one brew back, not zero
    assert ("storage_recovered", "counters") in d2.faults
    assert any(e.get("code") == "storage_recovered" for e in d2.outbox.events)
    _next_brew_saved_whole(profile, fs, d2)


def test_full_flash_keeps_counting_in_ram_and_raises_a_fault(profile, fs):
    d = Device(profile, fs)
    d.boot(1, 0)
    fs.full = True
    s = Script(profile)
    for _ in range(5):
        s.brew("espresso", 40)
    from brewmeter.onmicropython import replay

    for ev in sorted(s.settle().events):
        replay.step(d.meter, *ev, on_event=lambda code, i, t=ev[0]: d.event(code, i, t))
    assert d.meter.c.total_brews() == 5
    assert [f[0] for f in d.faults] == ["storage_full"]  # once, not per brew
    assert not d.storage_ok
    fs.full = False
    assert d.save(10**6)
    d2 = Device(profile, fs)
    d2.boot(1, 0)
    assert d2.meter.c.total_brews() == 5


def test_newer_format_is_refused_and_left_untouched(profile, fs):
    d = Device(profile, fs)
    d.boot(1, 0)
    d.meter.c.brews[1] = 42
    d.save(0)
    # Firmware from the future rewrites the file in format FORMAT+1.
    path = fs.root / "counts" / f"counters.{d.store._seq['counters'][1]}"
    body = struct.pack("<BI", FORMAT + 1, 99) + b"future layout"
    future = body + struct.pack("<I", store_mod.crc32(body))
    path.write_bytes(future)
    with pytest.raises(NewerFormat):
        load_counters(Store(fs, "/counts"))
    d2 = Device(profile, fs)
    d2.boot(1, 0)
    assert d2.faults[0][0] == "storage_newer" and d2.store.read_only
    d2.meter.c.brews[0] += 1
    d2.event(BREW, 0, 100)  # counts on in RAM ...
    assert d2.meter.c.brews[0] == 1
    assert path.read_bytes() == future  # ... and never overwrites what it cannot read


def test_outbox_ids_survive_reboot_and_acks_remove(profile, fs):
    d = Device(profile, fs)
    d.boot(1, 0)
    for i in range(3):
        d.add_event({"kind": "filter_changed", "n": i})
    assert [e["id"] for e in d.outbox.events] == [1, 2, 3]
    d.ack({2})
    d2 = Device(profile, fs)
    d2.boot(1, 0)
    assert [e["id"] for e in d2.outbox.events] == [1, 3]
    d2.add_event({"kind": "fault", "code": "x"})
    assert d2.outbox.events[-1]["id"] == 4  # never reuses an id


def test_outbox_full_drops_least_important_oldest_first():
    ob = Outbox()
    ob.add({"kind": "fault", "code": "old"})
    for i in range(MAX_EVENTS - 2):
        ob.add({"kind": "filter_changed", "n": i})
    ob.add({"kind": "fault", "code": "new"})
    assert len(ob.events) == MAX_EVENTS
    ob.add({"kind": "order_requested", "n": 99})  # full: the oldest fault makes room
    codes = [e.get("code") for e in ob.events if e["kind"] == "fault"]
    assert codes == ["new"] and ob.dropped == 1
    ob.add({"kind": "fault", "code": "newest"})  # faults only compete with faults
    assert [e.get("code") for e in ob.events if e["kind"] == "fault"] == ["newest"]
    ob.add({"kind": "fault", "code": "again"})
    assert [e.get("code") for e in ob.events if e["kind"] == "fault"] == ["again"]
    assert len(ob.events) == MAX_EVENTS and ob.dropped == 3
    assert sum(e["kind"] == "filter_changed" for e in ob.events) == MAX_EVENTS - 2
    ob.add({"kind": "order_requested", "n": 100})  # the last fault goes
    assert all(e["kind"] != "fault" for e in ob.events)
    ob.add({"kind": "order_requested", "n": 101})  # no fault left: the oldest billing event
    assert ob.events[0]["kind"] == "filter_changed" and ob.events[0]["n"] == 1


def test_device_saves_brews_at_once_and_water_within_flush_window(profile, fs):
    d = Device(profile, fs, flush_s=30)
    d.boot(1, 0)
    s = Script(profile).brew("lungo", 300, 100)  # a 100 s run: flushed while it runs
    from brewmeter.onmicropython import replay

    saved = []
    real_save = d.store.save_counters
    d.store.save_counters = lambda c: (saved.append(c.pump_ms), real_save(c))[1]
    for t, op, a, b in sorted(s.settle().events):
        replay.step(d.meter, t, op, a, b, on_event=lambda code, i, t=t: d.event(code, i, t))
        tick(d, t)
    assert d.meter.c.total_brews() == 1
    assert len(saved) >= 4  # ~every 30 s while pumping, then at the end of the brew
    gaps = [b - a for a, b in zip(saved, saved[1:], strict=False)]
    assert max(gaps) <= 32_000
    d2 = Device(profile, fs)
    d2.boot(1, 0)
    assert d2.meter.c.total_brews() == 1 and d2.meter.c.pump_ms == 100_000
    assert d2.meter.c.boots == 2


def test_a_reboot_never_takes_back_a_counter_a_report_carried(profile, fs):
    """What a report carries, the counters after a save and a reboot (as before an update's
    switch, or the console's reboot) are at least: the cloud flags a lower one
    (counter_regression). A 9.036 s brew: pump times off the record's 10 ms units."""
    d = Device(profile, fs)
    d.boot(1, 0)
    s = Script(profile).brew(profile.kinds[0], 30, 9.036).settle()
    from brewmeter.onmicropython import replay

    for t, op, a, b in sorted(s.events):
        replay.step(d.meter, t, op, a, b, on_event=lambda code, i, t=t: d.event(code, i, t))
        tick(d, t)
    assert d.meter.c.pump_ms % 10  # (what the record cannot hold)
    reported = usage(d)
    assert d.save(0)
    d2 = Device(profile, fs)
    d2.boot(1, 0)
    after = usage(d2)
    assert {k: v for k, v in reported.items() if not isinstance(v, dict)
            and after[k] < v} == {}, (reported, after)
    assert reported["pump_ms"] > 9000 and reported["filter_pump_ms"] == reported["pump_ms"]


def test_unknown_errno_is_a_storage_error_not_full(profile, fs):
    d = Device(profile, fs)
    d.boot(1, 0)

    def broken(path, mode):
        raise OSError(errno.EIO, "i/o")

    fs.open = broken
    d.event(BREW, 0, 1)
    assert d.faults[-1][0] == "storage_error"


def test_play_helper_still_counts(profile, meter):
    play(meter, Script(profile).brew("espresso", 40).settle().events)
    assert meter.c.total_brews() == 1


def test_full_littlefs_keeps_counting_and_deletes_nothing(profile):
    # Real littlefs on the emulated NOR flash, every block taken by other files.
    from brewmeter.emulator import lfs, lfsfs
    from brewmeter.onmicropython.norflash import NorFlash

    flash = NorFlash(block_count=16)
    lfs.format(flash)
    fs, root = lfsfs.mount(flash)
    d = Device(profile, fs, root=root)
    d.boot(1, 0)
    d.meter.c.brews[0] = 7
    assert d.save(1)
    with pytest.raises(OSError) as e:
        for n in range(100):
            with fs.open(f"/filler{n}", "wb") as f:
                f.write(bytes(4000))
    assert e.value.errno == errno.ENOSPC
    # The counters live inline in littlefs metadata: they still save on a full flash.
    for n in range(50):
        d.meter.c.brews[0] += 1
        assert d.save(2 + n)
    # A new outbox file needs a free block: refused, the event kept in RAM, one fault.
    d.refill("filter", "console", 100, 1_800_000_000)
    d.add_event({"kind": "order_requested", "n": 1})
    assert not d.storage_ok
    assert [f[0] for f in d.faults] == ["storage_full"]
    assert [e["kind"] for e in d.outbox.events] == ["filter_changed", "order_requested"]
    d.meter.c.brews[1] += 5  # counting goes on
    # Room again (the owner deleted the big files): the next write takes everything.
    for n in range(100):
        try:
            fs.remove(f"/filler{n}")
        except OSError:
            break
    d.add_event({"kind": "order_requested", "n": 2})
    assert d.save(500) and d.storage_ok
    fs2, _ = lfsfs.mount(flash)
    d2 = Device(profile, fs2, root=root)
    d2.recover()
    assert d2.meter.c.brews[0] == 57 and d2.meter.c.brews[1] == 5
    assert [e["kind"] for e in d2.outbox.events] == [
        "filter_changed", "order_requested", "order_requested"]


def test_the_counters_layouts_are_written_for_the_inputs_and_reset_causes():
    from app.counters import MAX_INPUTS, RESET_CAUSES, _layout

    for fmt in (2, 3):  # written out in _layout: the counts must still be these
        want = f"<{MAX_INPUTS}IIHIIII{len(RESET_CAUSES)}HBHIIIII" + "H" * 6 * (fmt - 2)
        assert struct.calcsize(_layout(fmt)) == struct.calcsize(want)
        n = len(struct.unpack(want, bytes(struct.calcsize(want))))
        assert struct.unpack(_layout(fmt), struct.pack(want, *range(n))) == tuple(range(n))


def test_remains_that_read_as_an_older_copy_count_on_from_the_good_one(profile, fs):
    """The newest copy overwritten with bytes whose header reads as an older copy's (a
    format below ours): the other copy is taken as the newest, one save back, and with no
    fault, as the remains cannot be told from an old copy without reading them whole. The
    next save replaces them."""
    _, victim = _three_brews_saved(profile, fs)
    victim.write_bytes(bytes([1]) + os.urandom(102))
    d2 = Device(profile, fs)
    d2.boot(1, 0)
    assert d2.meter.c.brews[0] == 2 and d2.faults == []
    _next_brew_saved_whole(profile, fs, d2)


def test_format_1_counters_migrate_and_are_rewritten_in_the_current_format(fs, profile):
    from app.counters import MAX_INPUTS, RESET_CAUSES

    # A counters file as the first firmware wrote it (format 1 layout, pump time in ms).
    v1 = f"<{MAX_INPUTS}IIIIIQI{len(RESET_CAUSES)}IBHIQIII"
    payload = struct.pack(v1, 3, 1, 0, 0, 2, 70000, 250, 0, 123_456_789, 4,
                          0, 3, 0, 1, 0, 0, 1, 1, 900, 45_678, 5, 1_800_000_000, 3600)
    body = struct.pack("<BI", 1, 1) + payload
    (fs.root / "counts").mkdir()
    crc = struct.pack("<I", store_mod.crc32(body))
    (fs.root / "counts" / "counters.0").write_bytes(body + crc)
    d = Device(profile, fs)
    d.boot(1, 0)
    c = d.meter.c
    assert c.brews == [3, 1, 0, 0] and c.rinses == 2 and c.stuck_runs == 65535
    assert c.water_ml == 250 and c.pump_ms == 123_456_789
    assert c.boots == 5 and c.resets[1] == 4  # this boot counted on top
    assert c.filter_ml == 900 and c.filter_fit_wall == 1_800_000_000
    # No storage fault; the first firmware kept no consumables: their cycles start now
    assert d.store.formats["counters"] == 1 and d.faults == [("supplies_reset",
                                                              "cycles from 327680")]
    d2 = Device(profile, fs)
    d2.recover()
    assert d2.store.formats["counters"] == FORMAT == 3
    assert d2.meter.c.pump_ms == 123_456_780  # formats 2+ keep it in 10 ms units
    c.pump_ms, c.filter_pump_ms = 123_456_780, 45_670
    assert d2.meter.c.__dict__ == c.__dict__


def test_applied_configuration_survives_reboot(profile, fs):
    d = Device(profile, fs)
    d.boot(1, 0)
    assert (d.config_version, d.config) == (0, {})
    d.apply_config(3, {"sync_interval_s": 900, "auto_order": {"coffee": True}})
    d2 = Device(profile, fs)
    d2.boot(1, 0)
    assert d2.config_version == 3
    assert d2.config == {"sync_interval_s": 900, "auto_order": {"coffee": True}}


def test_sequence_numbers_wrap_at_16_bits(fs):
    s = Store(fs, "/counts")
    s._seq["counters"] = (0xFFFE, 1)
    for i in range(4):  # seqs 0xFFFF, 0, 1, 2 across the wrap
        s.save_counters(_counters(i))
        assert load_counters(Store(fs, "/counts")).brews[0] == i
