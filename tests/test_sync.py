"""The device's sync: schedule, report, reply handling, signing and the HTTP client, under
CPython against real sockets on 127.0.0.1 (the emulated cloud's tests are in test_cloud.py)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from app import VERSION, http, protocol, sync, synctask
from app.device import Device
from app.signing import signature


@pytest.fixture
def device(profile, tmp_path):
    from brewmeter.standins.hostfs import DirFS

    d = Device(profile, DirFS(tmp_path))
    d.boot(1, 0)
    return d


def test_signature_is_hmac_sha256_over_method_path_seq_body():
    import hashlib
    import hmac

    key, body = bytes(range(32)), b'{"seq":5}'
    want = hmac.new(key, b"POST\n/v1/devices/bm-1/report\n5\n" + body, hashlib.sha256)
    assert signature(key, "POST", "/v1/devices/bm-1/report", 5, body) == want.hexdigest()


def test_hmac_sha256_matches_rfc_4231():
    from binascii import hexlify

    from app.signing import hmac_sha256

    # Test cases 1, 2 and 6: a short key, a key shorter than a word, one past the block size
    for key, msg, want in (
        (b"\x0b" * 20, b"Hi There",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe", b"what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")):
        assert hexlify(hmac_sha256(key, msg[:5], msg[5:])).decode() == want


def test_schedule_coalesces_usage_reports_daily_and_backs_off():
    cfg = {"report_delay_s": 60, "sync_interval_s": 3600, "backoff_max_s": 600}
    s = sync.Schedule(0)
    assert s.is_due(0)  # a report at boot
    s.sent()
    s.succeeded(0, cfg)
    assert not s.is_due(3_599_000) and s.is_due(3_600_000)  # heartbeat
    s.usage(1000, cfg)
    s.usage(50_000, cfg)  # coalesced with the first
    assert not s.is_due(60_999) and s.is_due(61_000)
    s.sent()
    delays = []
    for _ in range(12):
        s.failed(100_000, cfg, 0.999)
        delays.append(s.ms_until_due(100_000))
    assert delays[0] < delays[3] and max(delays) <= 600_000  # exponential, capped
    s.failed(100_000, cfg, 0.0)
    assert s.ms_until_due(100_000) == 300_000  # equal jitter: never under half the window
    s.succeeded(200_000, cfg)
    assert s.failures == 0
    assert s.is_due(200_000 + 60_000)  # the usage the failed reports carried is still owed
    s.sent()
    s.failed(300_000, cfg, 0.0, retry_after_s=120)
    assert s.ms_until_due(300_000) == 120_000  # Retry-After honoured over the backoff


def test_jitter_is_the_devices_own_and_spreads_a_fleets_retries():
    # Seeded from the id: the same device draws the same, the next id something else.
    a, b = sync.seed("bm-000001"), sync.seed("bm-000002")
    assert a == sync.seed("bm-000001") and a != b
    assert sync.jitter(a) == sync.jitter(a) and sync.jitter(a) != sync.jitter(b)
    cfg = {"report_delay_s": 60, "sync_interval_s": 86400, "backoff_max_s": 3600}
    # A thousand devices numbered in a row, each after a long outage (12 failures): their
    # next tries spread over the backoff's second half-hour, no minute taking more than a few.
    per_minute = [0] * 30
    daily = []
    for i in range(1000):
        x = sync.seed(f"bm-{i:06d}")
        s = sync.Schedule(0)
        for _ in range(12):
            x = sync.jitter(x)
            assert 0 < x < 4294967296
            s.failed(0, cfg, x / 4294967296)
        per_minute[min(59, s.ms_until_due(0) // 60000) - 30] += 1
        x = sync.jitter(x)
        s.sent()  # the retry that gets through
        s.succeeded(0, cfg, False, x / 4294967296)
        daily.append(s.ms_until_due(0))
    assert max(per_minute) <= 60 and min(per_minute) >= 15, per_minute
    # The daily report comes up to a tenth sooner, so those who came back together drift apart.
    assert 0.9 * 86_400_000 <= min(daily) and max(daily) <= 86_400_000
    assert len(set(d // 60000 for d in daily)) > 100


def test_report_is_cumulative_and_carries_events_and_config(device):
    device.meter.c.brews[0] = 3
    device.add_event({"kind": "filter_changed", "cycle": 0})
    body = sync.report(synctask.snapshot(device), protocol.seq(device.meter.c.boots, 2),
                       1_800_000_000, 5000, device.days.buckets(), synctask.usage(device))
    d = json.loads(body)
    assert d["seq"] == (1 << 20) + 2 and d["clock"] == 1_800_000_000 and d["boot"] == 1
    assert d["counters"]["brews"]["espresso"] == 3 and d["counters"]["brews_total"] == 3
    assert [e["kind"] for e in d["events"]] == ["filter_changed"]
    assert d["config"] == {"applied": 0}


def test_only_changed_counters_travel_after_the_first_report(device):
    first = synctask.usage(device)
    assert sync.changed(first, None) == first
    device.meter.c.brews[2] += 1
    device.meter.c.water_ml += 110
    assert sync.changed(synctask.usage(device), first) == {
        "brews": {"lungo": 1}, "brews_total": 1, "water_ml": 110}


def test_a_report_is_built_from_a_snapshot_alone():
    # (boot, applied config version, outbox events, open orders): no device, flash nor socket
    snap = (3, 2, ({"id": 7, "kind": "fault", "code": "x"},), {"coffee-1": "requested"})
    body = sync.report(snap, 9, 1_800_000_000, 5000, [{"day": 20_000, "brews_total": 4}],
                       {"boots": 3, "brews_total": 4}, (5, "no such setting"),
                       {"coffee": {"pct": 40}})
    assert json.loads(body) == {
        "seq": 9, "boot": 3, "uptime_ms": 5000, "clock": 1_800_000_000,
        "counters": {"boots": 3, "brews_total": 4},
        "days": [{"day": 20_000, "brews_total": 4}],
        "events": [{"id": 7, "kind": "fault", "code": "x"}],
        "config": {"applied": 2, "rejected": {"version": 5, "reason": "no such setting"}},
        "fw": VERSION, "supplies": {"coffee": {"pct": 40}}, "orders": {"coffee-1": "requested"}}
    assert "fw" not in json.loads(sync.report(snap, 10, 0, 6000, [], {"brews_total": 5}))


def test_a_reply_becomes_the_actions_to_apply():
    reply = {"ack": [1, 2, 99], "orders": {"coffee-0": "shipped"},
             "refill": {"filter": 0, "coffee": 5, "nothing": 1},
             "config": {"version": 4, "settings": {"sync_interval_s": 900}}}
    todo, rejected = sync.actions(json.dumps(reply).encode(), [1, 2], 3, ("espresso",),
                                  {"filter": 0, "coffee": 1}.get)
    assert todo == [("ack", [1, 2]), ("orders", {"coffee-0": "shipped"}), ("refill", "filter"),
                    ("config", 4, {"sync_interval_s": 900})]
    assert rejected is None
    # An older configuration is refused; a reply without one keeps the rejection reported.
    reply["config"] = {"version": 2, "settings": {}}
    todo, rejected = sync.actions(json.dumps(reply).encode(), [], 3, ("espresso",), {}.get)
    assert todo == [("ack", []), ("orders", {"coffee-0": "shipped"})]
    assert rejected == (2, "version 2 is older than the applied 3")
    assert sync.actions(b'{"ack": []}', [], 3, (), {}.get, rejected) == ([("ack", [])], rejected)
    assert sync.actions(b'{"ack": [], "config": {"version": 5, "settings": {"x": 1}}}', [], 3,
                        (), {}.get)[1] == (5, "unknown setting 'x'")
    with pytest.raises(sync.BadReply):
        sync.actions(b'{"ack": [true]}', [], 3, (), {}.get)


def test_an_open_orders_status_the_protocol_does_not_know_becomes_a_fault():
    # Said once: only while the order is open (adopting the status closes it).
    reply = json.dumps({"ack": [], "orders": {"coffee-3": "cancelled", "filter-3": "shipped",
                                              "tablets-3": "unknown", "descaler-2": "lost",
                                              "coffee-2": "x" * 40}}).encode()
    opened = {"coffee-3": "placed", "filter-3": "placed", "tablets-3": "requested",
              "coffee-2": "placed"}
    todo = sync.actions(reply, [], 0, (), {}.get, None, opened)[0]
    assert sorted(a for a in todo if a[0] == "fault") == [  # (MicroPython's dicts: unordered)
        ("fault", "order_status", "coffee-2 " + "x" * 32),
        ("fault", "order_status", "coffee-3 cancelled")]
    assert todo.index(("fault", "order_status", "coffee-3 cancelled")) > 1  # after "orders"
    assert not [a for a in sync.actions(reply, [], 0, (), {}.get)[0] if a[0] == "fault"]


def test_reply_acks_only_what_was_sent_and_applies_config(device):
    device.add_event({"kind": "filter_changed"})
    device.add_event({"kind": "fault", "code": "x"})
    reply = {"ack": [1, 2, 99], "config": {"version": 4, "settings": {"sync_interval_s": 900}}}
    assert synctask.apply_reply(device, json.dumps(reply).encode(), sent_ids=[1]) is None
    assert [e["id"] for e in device.outbox.events] == [2]
    assert device.config_version == 4 and device.config == {"sync_interval_s": 900}


def test_setting_reads_each_default_by_its_bare_name():
    names = protocol.SETTINGS.split()[::4]
    for n in names:
        # setting() finds the bare name: it must occur once, in no other name
        assert protocol.SETTINGS.count(n) == 1, n
        assert protocol.setting({}, n) == protocol.limits(n)[2]
        assert protocol.setting({n: 7}, n) == 7
    with pytest.raises(KeyError):
        protocol.setting({}, "colour")


def test_the_code_reads_settings_by_whole_names():
    from pathlib import Path

    from app.supplies import ITEMS

    root = Path(__file__).parent.parent
    said = set()
    for pattern in ("firmware/app/*.py", "host/brewmeter/**/*.py"):
        for path in root.glob(pattern):
            said.update(re.findall(r'setting\([^,()]+, "(\w+)"\)', path.read_text()))
    assert "water_hardness_dh" in said and "lead_days" in said
    for i in ITEMS:
        said.add("auto_" + i)
    assert said <= set(protocol.SETTINGS.split()[::4])


@pytest.mark.parametrize("settings, words", [
    ({"sync_interval_s": 5}, "300..86400"),
    ({"colour": 1}, "unknown setting"),
    # keys that are one of the numbers, or a piece of a name, in protocol.SETTINGS' string
    ({"300": 1}, "unknown setting"), ({"5": 1}, "unknown setting"),
    ({"auto": 1}, "unknown setting"), ({"sync_interval_s 300": 1}, "unknown setting"),
    ("all", "object"),
])
def test_invalid_desired_config_is_rejected_and_the_last_good_kept(device, settings, words):
    device.apply_config(2, {"sync_interval_s": 600})
    reply = json.dumps({"ack": [], "config": {"version": 3, "settings": settings}}).encode()
    version, reason = synctask.apply_reply(device, reply, [])
    assert version == 3 and words in reason
    assert device.config_version == 2 and device.config == {"sync_interval_s": 600}


@pytest.mark.parametrize("body", [
    b"", b"garbage", b"[]", b'{"ack": "all"}', b'{"ack": [1, "2"]}', b'{"ack": [true]}',
    b'{"ack": [1], "config": {"settings": {}}}', b'{"ack": [1]' + b"x" * 10,
])
def test_garbled_reply_changes_nothing(device, body):
    device.add_event({"kind": "filter_changed"})
    before = (list(device.outbox.events), device.config_version)
    with pytest.raises(sync.BadReply):
        synctask.apply_reply(device, body, [1])
    assert (device.outbox.events, device.config_version) == before


async def _serve(reply: bytes, delay: float = 0.0, drip: float = 0.0):
    """A raw TCP server that reads a request and answers `reply` (maybe slowly)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(delay)
            if drip:
                for b in reply:
                    writer.write(bytes([b]))
                    await writer.drain()
                    await asyncio.sleep(drip)
            else:
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_http_post_reads_a_good_reply():
    server, url = await _serve(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n"
                               b"Retry-After: 7\r\n\r\n{\"ack\": []}")
    async with server:
        assert await http.post(url, "/x", {}, b"{}", 2000) == (200, 7, b'{"ack": []}')


@pytest.mark.parametrize("reply, delay, drip, words", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000, 0, 0, "over"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"ack\"", 0, 0, "bad reply"),
    (b"HTTP/1.1 200 OK\r\n\r\n{}", 0, 0, "Content-Length"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", 0, 0, "not an HTTP reply"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 5000 + b"\r\n\r\n", 0, 0, "too long"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 1.5, 0, "no reply within"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20, 0, 0.05, "no reply within"),
    (b"", 0, 0, "closed"),
])
@pytest.mark.slow
async def test_http_post_survives_bad_servers(reply, delay, drip, words):
    server, url = await _serve(reply, delay, drip)
    async with server:
        with pytest.raises(http.HttpError, match=words):
            await http.post(url, "/x", {}, b"{}", 1000)


async def test_http_post_refused_connection_is_an_oserror():
    server, url = await _serve(b"")
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await http.post(url, "/x", {}, b"{}", 1000)


def test_parse_url():
    assert http.parse_url("https://cloud.example:8443/api/") == (
        "https", "cloud.example", 8443, "/api")
    assert http.parse_url("http://127.0.0.1") == ("http", "127.0.0.1", 80, "")
    with pytest.raises(ValueError):
        http.parse_url("ftp://x")


class Loopback:
    """The network link on 127.0.0.1: always up (the radio has no stand-in here)."""

    async def up(self) -> None:
        return None


async def _syncer(device, cloud, key: str, ssl=None):  # noqa: ANN001
    from app.synctask import wire

    # No NTP server in these tests ("ntp": ""): the clock stays unset.
    prov = {"device_id": "bm-test01", "key": key, "cloud_url": cloud.url, "ntp": ""}
    return wire(device, prov, Loopback(), ssl)


@pytest.mark.parametrize("tls", [False, True])
async def test_device_reports_to_the_emulated_cloud(device, tmp_path, tls):
    import ssl as ssl_mod

    import trustme
    from app import tls as tls_mod
    from brewmeter.cloud import CloudServer

    key = "ab" * 32
    server_ctx = client_ctx = None
    if tls:
        ca = trustme.CA()
        server_ctx = ssl_mod.create_default_context(ssl_mod.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        client_ctx = tls_mod.context(ca.cert_pem.bytes().decode())  # the firmware's own
    async with CloudServer(tmp_path / "ledger.db", devices=[("bm-test01", key)],
                           ssl_context=server_ctx) as cloud:
        s = await _syncer(device, cloud, key, client_ctx)
        device.meter.c.brews[0] = 5
        device.meter.c.water_ml = 200
        device.add_event({"kind": "filter_changed", "cycle": 0})
        assert await s.sync_once() == "ok"
        assert device.outbox.events == []  # acknowledged, gone
        cloud.ledger.set_config("bm-test01", {"sync_interval_s": 900})
        device.meter.c.brews[0] = 7
        assert await s.sync_once() == "ok"
        assert device.config == {"sync_interval_s": 900} and device.config_version == 1
        got = cloud.ledger.device("bm-test01")
    assert got["counters"]["brews"]["espresso"] == 7
    assert got["counters"]["water_ml"] == 200


async def test_wrong_key_or_untrusted_server_fails_and_backs_off(device, tmp_path):
    import ssl as ssl_mod

    import trustme
    from app import tls as tls_mod
    from brewmeter.cloud import CloudServer

    ca, other = trustme.CA(), trustme.CA()
    server_ctx = ssl_mod.create_default_context(ssl_mod.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    async with CloudServer(":memory:", devices=[("bm-test01", "ab" * 32)],
                           ssl_context=server_ctx) as cloud:
        s = await _syncer(device, cloud, "cd" * 32, tls_mod.context(ca.cert_pem.bytes().decode()))
        assert await s.sync_once() == "HTTP 401"
        s2 = await _syncer(device, cloud, "ab" * 32,
                           tls_mod.context(other.cert_pem.bytes().decode()))
        result = await s2.sync_once()
        assert result != "ok" and s2.schedule.failures == 1
        assert cloud.ledger.device("bm-test01")["counters"] == {}


@pytest.mark.slow
def test_chaos_1000_faults_lose_and_double_nothing(capsys):
    from brewmeter import cli

    assert cli.main(["chaos", "--faults", "1000", "--seed", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["faults"] == 1000 and r["power_cuts"] > 50
    assert r["lost"] == 0 and r["duplicated"] == 0
    assert r["device_brews"] == r["cloud_brews"] == r["billed_brews"] > 500
    assert r["invoice_cents"] == r["device_brews"] * 35
    assert r["events_in_cloud"] == r["events_created"] > 10


def test_uptime_in_reports_survives_the_ticks_wrap(device):
    """ticks_ms wraps every 2**30 ms (12.4 days on an ESP32); a report's uptime_ms must keep
    growing past that (the cloud refuses a negative one: found by a simulated year)."""
    from time import ticks_add

    from brewmeter.onmicropython.replay import tick

    now = 0
    for _ in range(13 * 24):  # 13 days, an hour per poll
        now = ticks_add(now, 3_600_000)
        tick(device, now)
    assert device.uptime_ms(now) == 13 * 86_400_000
    body = json.loads(sync.report(synctask.snapshot(device), 1, 0, device.uptime_ms(now), [], {}))
    assert body["uptime_ms"] == 13 * 86_400_000


async def test_offline_the_device_tries_hourly_a_cloud_that_is_down_it_spares_for_hours(device):
    import socket
    from time import ticks_ms

    from app.synctask import Syncer

    class NoWifi:
        async def up(self) -> None:
            raise OSError("no Wi-Fi")

    with socket.socket() as s:  # a port nothing listens on: the cloud down, refusing
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prov = {"device_id": "bm-t1", "key": "00" * 32, "cloud_url": f"http://127.0.0.1:{port}",
            "ntp": ""}
    waits = {}
    for name, link in (("offline", NoWifi()), ("cloud down", Loopback())):
        syncer = Syncer(device, prov, link)
        got = []
        for _ in range(16):  # past the doubling, at the cap
            assert await syncer.sync_once() != "ok"
            got.append(syncer.schedule.ms_until_due(ticks_ms()))
        waits[name] = got[-4:]
    assert all(w <= 3_600_000 for w in waits["offline"])  # a Wi-Fi window of an hour is caught
    assert all(7_200_000 <= w <= 14_400_000 for w in waits["cloud down"])  # backoff_max_s, 4 h
