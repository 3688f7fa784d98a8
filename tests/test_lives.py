"""The issue's reproductions, each a device life against the emulated cloud (brewmeter.lives):
a machine offline past its history, a desired setting with a 250-character name, a 409 after
the device lost its flash, and one boot with the clock three years ahead."""

from __future__ import annotations

import json

import pytest
from app import protocol
from brewmeter.lives import DEVICE, PRICE_CENTS, Life


def _brews(days: list[dict]) -> dict[int, int]:
    return {d["day"]: d["brews_total"] for d in days}


@pytest.mark.parametrize("offline_days", [70, 400])
async def test_offline_past_the_history_syncs_every_brew_in_one_go(tmp_path, offline_days):
    async with Life(tmp_path) as life:
        await life.day(5)
        for d in range(offline_days):  # daily use, offline; a reboot and a power cut a month
            await life.day(14 + d % 3, online=False)
            if d % 30 == 10:
                life.reboot()
            elif d % 30 == 20:
                life.boot()  # power cut: what was not saved is gone, the flash is not
        results = await life.heal()
        dev = life.device_counters()
        # One sync after the network is back: the lifetime counters are the device's.
        assert results[0] == "ok"
        # (heal() went on until the device was caught up: the pages came at once)
        assert results[-1] == "ok" and not life.device.days.more
        cloud = life.cloud_device()
        assert cloud["counters"]["brews_total"] == dev["brews_total"] > 14 * offline_days
        assert cloud["counters"] == dev | {"brews": dev["brews"]}
        days = life.cloud_days()
        assert sum(d["brews_total"] for d in days) == dev["brews_total"]
        truth = life.truth
        for d in days:  # each day exact, or marked estimated (the folded oldest)
            assert d["brews_total"] == truth.get(d["day"]) or d["estimated"], d
        assert sum(1 for d in days if d["estimated"]) <= 2
        bill = life.invoice()
        assert bill["brews"] == dev["brews_total"]
        assert bill["total_cents"] == dev["brews_total"] * PRICE_CENTS
        assert not [r for r in life.results if r.startswith("HTTP 4")]


async def test_a_250_char_setting_name_is_rejected_with_a_reason_the_cloud_takes(tmp_path):
    async with Life(tmp_path) as life:
        await life.day(3)
        # Stored as an older cloud did, unchecked (this cloud refuses it at the admin API).
        name = "x" * 250
        assert not life.desire({name: 1})
        with life.ledger._tx() as db:
            db.execute("UPDATE devices SET desired_version=desired_version+1, "
                       "desired_settings=? WHERE id=?", (json.dumps({name: 1}), DEVICE))
        await life.day(3)
        await life.day(3)
        got = life.cloud_device()["config"]
        assert got["rejected"]["version"] == 1
        assert "unknown setting" in got["rejected"]["reason"]
        assert len(got["rejected"]["reason"]) <= protocol.MAX_TEXT
        assert set(life.results[-3:]) == {"ok"}  # reports go on
        assert got["applied"] == 0 and life.device.config == {}
        assert life.cloud_device()["counters"]["brews_total"] == 9


async def test_a_409_after_a_lost_flash_goes_on_past_the_clouds_seq(tmp_path):
    async with Life(tmp_path) as life:
        assert life.desire({"ask_first": 1})
        for _ in range(3):
            await life.day(4)
            life.reboot()  # boot 4 by now: its seqs are far above a new boot 1's
        assert life.device.config == {"ask_first": 1}
        highest = life.cloud_device()["last_seq"]
        life.lose_flash()  # a replaced flash: boot 1 again, config and seqs forgotten
        assert life.device.config == {}
        await life.heal()
        assert "seq conflict" in life.results
        await life.day(1)  # the next report says what it applied
        got = life.cloud_device()
        assert got["last_seq"] > highest  # its reports are the newest again
        # The owner's config is back on the device, and the cloud says so truthfully.
        assert life.device.config == {"ask_first": 1}
        assert got["config"]["applied"] == got["config"]["desired"]["version"] == 1
        assert life.device.config_version == 1
        life.reboot()  # the floor is in flash: no conflict again after a reboot
        n = len(life.results)
        await life.day(2)
        assert "seq conflict" not in life.results[n:]
        assert life.cloud_device()["last_seq"] > got["last_seq"]


@pytest.mark.parametrize("online", [False, True])
async def test_one_boot_with_the_clock_3_years_ahead_bills_every_brew_to_its_day(tmp_path,
                                                                                online):
    async with Life(tmp_path) as life:
        await life.day(2)
        life.skew = 3 * 365 * 86400  # a wrong NTP answer at the next boot
        life.advance(3_600_000)
        life.boot()
        life.link.ok = online
        for _ in range(5):
            life.brew()
            await life.sync_if_due()  # online: the cloud's Date sets the clock right
            life.advance(600_000)
        life.skew = 0
        life.boot()  # the next boot, the same day: NTP is right again
        for _ in range(20):
            await life.day(10)
        await life.heal()
        days = life.cloud_days()
        assert _brews(days) == life.truth  # every brew on its real day
        bill = life.invoice()
        assert bill["brews"] == sum(life.truth.values()) == 2 + 5 + 200
        assert bill["total_cents"] == bill["brews"] * PRICE_CENTS
