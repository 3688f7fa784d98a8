"""The cloud's releases and staged rollouts over the JSON API (releases.py, releases_api.py),
on SQLite and PostgreSQL: an operator uploads a signed release (its manifest checked against
the image), rolls it out to a percentage of the fleet, a list or an owner's machines, in
stages that advance as the machines report done, halted by itself over the failure rate,
paused, resumed and stopped; every action in the audit log; owners read their machines'
versions and nothing of the operator's. The machines' update states are recorded the way a
report's merge will record them (the devices do not send them yet)."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import pytest
from brewmeter import release
from brewmeter.cloud import CloudServer, Ledger
from brewmeter.cloud.releases_api import MAX_UPLOAD

KEY = "44" * 32
T0 = 1_773_000_000.0
FLEET = [f"bm-ro{i:04d}" for i in range(20)]
IMAGE = bytes(range(256)) * 240 + b"the new app"  # over a report's body limit in base64


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> dict[str, str]:
    """A release as `brewmeter release` makes one: manifest, signature (the maker's key),
    image; as the upload's JSON body."""
    d = tmp_path_factory.mktemp("release")
    release.keygen(d / "release.key")
    (d / release.IMAGE).write_bytes(IMAGE)
    (d / release.MANIFEST).write_bytes(release.manifest(IMAGE, ["emulator"], version="0.2.0",
                                                        mpy=6))
    sig = release.sign(d / "release.key", d / release.MANIFEST).read_bytes()
    return {"manifest": (d / release.MANIFEST).read_text(),
            "signature": base64.b64encode(sig).decode(),
            "image": base64.b64encode(IMAGE).decode()}


@pytest.fixture
async def cloud(ledger_at):
    ledger = Ledger(ledger_at, now=lambda: T0)
    for dev in FLEET:
        ledger.add_device(dev, KEY)
    async with CloudServer(ledger) as c:
        yield c
    ledger.close()


async def call(http: aiohttp.ClientSession, method: str, path: str, token: str | None,
               body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, path, json=body, headers=headers) as r:
        return r.status, await r.json()


def report(cloud: CloudServer, dev: str, release_id: str, state: str,
           reason: str | None = None) -> None:
    """The device's UpdateStatus, recorded as the report's merge will."""
    rel = cloud.ledger.releasing
    with cloud.ledger.db.tx() as c:
        rel.record_status(c, dev, {"release": release_id, "state": state,
                                   **({"reason": reason} if reason else {})})


async def upload(http, cloud, signed, rid: str = "r-v020") -> None:
    st, out = await call(http, "PUT", f"/v1/admin/releases/{rid}", cloud.admin_token, signed)
    assert st == 201, out


async def test_an_operator_uploads_a_signed_release_checked_against_its_image(
        cloud, http, signed):
    admin = cloud.admin_token
    st, out = await call(http, "PUT", "/v1/admin/releases/r-v020", admin, signed)
    assert st == 201
    m = json.loads(signed["manifest"])
    assert out | {"created": None} == {"id": "r-v020", "version": "0.2.0", "size": len(IMAGE),
                                       "sha256": m["sha256"], "created": None}
    assert (await call(http, "PUT", "/v1/admin/releases/r-v020", admin, signed))[0] == 200
    other = {**signed, "signature": base64.b64encode(b"\1" * 256).decode()}
    st, out = await call(http, "PUT", "/v1/admin/releases/r-v020", admin, other)
    assert st == 409 and "new id" in out["error"]
    tampered = bytearray(IMAGE)
    tampered[100] ^= 1
    for body, why in (({**signed, "image": base64.b64encode(bytes(tampered)).decode()},
                       "SHA-256"),
                      ({**signed, "image": base64.b64encode(IMAGE[:-1]).decode()}, "bytes"),
                      ({**signed, "signature": base64.b64encode(b"\1" * 255).decode()},
                       "255 bytes"),
                      ({**signed, "manifest": signed["manifest"].replace('"format":1',
                                                                        '"format":2')},
                       "format"),
                      ({**signed, "manifest": "x" * 1025}, "1024 bytes")):
        st, out = await call(http, "PUT", "/v1/admin/releases/r-bad", admin, body)
        assert st == 422 and why in out["error"], out
    big = {**signed, "image": "A" * MAX_UPLOAD}
    st, out = await call(http, "PUT", "/v1/admin/releases/r-big", admin, big)
    assert st == 413, out
    st, out = await call(http, "GET", "/v1/admin/releases", admin)
    assert [r["id"] for r in out["releases"]] == ["r-v020"]  # none of the bad ones kept
    # the image is kept whole
    with cloud.ledger.db.read() as c:
        (img,) = c.execute("SELECT image FROM releases WHERE id='r-v020'").fetchone()
    assert bytes(img) == IMAGE
    log = cloud.ledger.audit_log(None)
    assert [(e["who"], e["action"]) for e in log] == [("operator", "release")]
    assert "r-v020: version 0.2.0" in log[0]["detail"]


async def test_a_percentage_rolls_out_in_stages_and_halts_by_itself(cloud, http, signed):
    await upload(http, cloud, signed)
    admin = cloud.admin_token
    st, out = await call(http, "PUT", "/v1/admin/rollouts/ro-1", admin, {
        "release": "r-v020", "machines": {"percent": 50}, "stages": [0.2, 0.6, 1.0],
        "max_failure_rate": 0.25})
    assert st == 201 and out["targets"] == 10 and out["stage_machines"] == [2, 6, 10]
    assert (out["state"], out["stage"], out["offered"]) == ("running", 1, 2)
    order = [m["id"] for m in out["devices"]]
    first = [m["id"] for m in out["devices"] if m["offered"]]
    assert first == order[:2]
    # stable: the same rollout of the same fleet names the same machines
    again = await call(http, "GET", "/v1/admin/rollouts/ro-1", admin)
    assert [m["id"] for m in again[1]["devices"]] == order
    rel = cloud.ledger.releasing
    assert rel.offer_for(first[0])["rollout"] == "ro-1"
    assert rel.offer_for(first[0])["manifest"] == signed["manifest"]
    assert rel.offer_for(order[2]) is None  # stage 2's: not yet
    for dev in first:
        report(cloud, dev, "r-v020", "downloading")
    assert (await call(http, "GET", "/v1/admin/rollouts/ro-1", admin))[1]["stage"] == 1
    for dev in first:
        report(cloud, dev, "r-v020", "done")
    out = (await call(http, "GET", "/v1/admin/rollouts/ro-1", admin))[1]
    assert out["stage"] == 2 and [m["id"] for m in out["devices"] if m["offered"]] == order[2:6]
    assert rel.offer_for(first[0]) is None  # done: offered no more
    # stage 2: one fails (1 of 3 finished: 33 % > 25 %): halted, nothing offered
    report(cloud, order[3], "r-v020", "failed", "update_trial_failed")
    out = (await call(http, "GET", "/v1/admin/rollouts/ro-1", admin))[1]
    assert (out["state"], out["offered"], out["failed"], out["done"]) == ("halted", 0, 1, 2)
    # halted it stays, though the next done brings the rate to 1 of 4 (not over 25 %)
    report(cloud, order[2], "r-v020", "done")
    out = (await call(http, "GET", "/v1/admin/rollouts/ro-1", admin))[1]
    assert (out["state"], out["failure_rate"], out["done"]) == ("halted", 0.25, 3)
    assert {m["id"]: m["reason"] for m in out["devices"]}[order[3]] == "update_trial_failed"
    assert all(rel.offer_for(d) is None for d in FLEET)
    log = cloud.ledger.audit_log(None)
    assert (log[0]["who"], log[0]["action"]) == ("cloud", "rollout")
    assert log[0]["detail"].startswith("ro-1: halted by itself: 1 of 3 machines failed")
    # resuming a halted rollout is refused: a new rollout, once the cause is known
    st, out = await call(http, "POST", "/v1/admin/rollouts/ro-1/resume", admin)
    assert st == 409 and "halted" in out["error"]


async def test_pause_resume_and_stop_each_in_the_audit_log(cloud, http, signed):
    await upload(http, cloud, signed)
    admin = cloud.admin_token
    devices = FLEET[:4]
    st, out = await call(http, "PUT", "/v1/admin/rollouts/ro-list", admin, {
        "release": "r-v020", "machines": {"devices": devices}, "stages": [0.5, 1.0]})
    assert st == 201 and sorted(m["id"] for m in out["devices"]) == sorted(devices)
    rel = cloud.ledger.releasing
    offered = [m["id"] for m in out["devices"] if m["offered"]]
    assert len(offered) == 2
    st, out = await call(http, "POST", "/v1/admin/rollouts/ro-list/pause", admin)
    assert (st, out["state"], out["offered"]) == (200, "paused", 0)
    assert rel.offer_for(offered[0]) is None
    assert (await call(http, "POST", "/v1/admin/rollouts/ro-list/pause", admin))[0] == 409
    # a machine in a paused rollout is not taken by another
    st, out = await call(http, "PUT", "/v1/admin/rollouts/ro-2", admin, {
        "release": "r-v020", "machines": {"devices": [devices[0]]}})
    assert st == 409 and "ro-list" in out["error"]
    st, out = await call(http, "POST", "/v1/admin/rollouts/ro-list/resume", admin)
    assert (st, out["state"], out["offered"]) == (200, "running", 2)
    st, out = await call(http, "POST", "/v1/admin/rollouts/ro-list/stop", admin)
    assert (st, out["state"], out["offered"]) == (200, "stopped", 0)
    assert (await call(http, "POST", "/v1/admin/rollouts/ro-list/resume", admin))[0] == 409
    st, _ = await call(http, "PUT", "/v1/admin/rollouts/ro-2", admin, {
        "release": "r-v020", "machines": {"devices": [devices[0]]}})
    assert st == 201  # stopped: its machines are free
    assert (await call(http, "PUT", "/v1/admin/rollouts/ro-2", admin, {
        "release": "r-v020", "machines": {"devices": [devices[1]]}}))[0] == 409  # id in use
    details = [e["detail"] for e in reversed(cloud.ledger.audit_log(None))
               if e["action"] == "rollout"]
    assert [d.split(" ", 1)[1].split(" ")[0] for d in details] == [
        "release", "pause", "resume", "stop", "release"]
    st, out = await call(http, "GET", "/v1/admin/rollouts", admin)
    assert [(r["id"], r["state"]) for r in out["rollouts"]] == [("ro-2", "running"),
                                                               ("ro-list", "stopped")] or [
        (r["id"], r["state"]) for r in out["rollouts"]] == [("ro-list", "stopped"),
                                                            ("ro-2", "running")]
    assert "devices" not in out["rollouts"][0]  # the list: progress only


async def test_an_owners_machines_and_what_an_owner_may_read(cloud, http, signed):
    await upload(http, cloud, signed)
    admin = cloud.admin_token
    st, out = await call(http, "POST", "/v1/admin/owners", admin, {"name": "alice"})
    alice = out["token"]
    for dev in FLEET[:3]:
        await call(http, "PUT", f"/v1/admin/devices/{dev}/owner", admin, {"owner": "alice"})
    # a machine already on the release's version is done: nothing to offer it
    with cloud.ledger.db.tx() as c:
        c.execute("UPDATE devices SET fw='0.2.0' WHERE id=?", (FLEET[2],))
    st, out = await call(http, "PUT", "/v1/admin/rollouts/ro-alice", admin, {
        "release": "r-v020", "machines": {"owner": "alice"}, "stages": [1.0],
        "max_failure_rate": 0})
    assert st == 201 and sorted(m["id"] for m in out["devices"]) == FLEET[:3]
    assert {m["id"]: m["state"] for m in out["devices"]}[FLEET[2]] == "done"
    assert sorted(m["id"] for m in out["devices"] if m["offered"]) == FLEET[:2]
    for dev in FLEET[:2]:
        report(cloud, dev, "r-v020", "done")
    out = (await call(http, "GET", "/v1/admin/rollouts/ro-alice", admin))[1]
    assert (out["state"], out["done"]) == ("complete", 3)
    # the owner reads their machine's version and update state, not another's, nor rollouts
    report(cloud, FLEET[1], "r-v020", "trial")
    st, out = await call(http, "GET", f"/v1/devices/{FLEET[1]}/update", alice)
    assert st == 200 and out["fw"] is None and out["update"]["state"] == "trial"
    assert out["update"]["version"] == "0.2.0"
    assert (await call(http, "GET", f"/v1/devices/{FLEET[5]}/update", alice))[0] == 404
    assert (await call(http, "GET", f"/v1/devices/{FLEET[5]}/update", admin))[1]["update"] \
        is None
    for method, path, body in (("GET", "/v1/admin/rollouts", None),
                               ("GET", "/v1/admin/rollouts/ro-alice", None),
                               ("POST", "/v1/admin/rollouts/ro-alice/stop", None),
                               ("GET", "/v1/admin/releases", None),
                               ("PUT", "/v1/admin/releases/r-x", signed),
                               ("PUT", "/v1/admin/rollouts/ro-x",
                                {"release": "r-v020", "machines": {"owner": "alice"}})):
        assert (await call(http, method, path, alice, body))[0] == 403, path
        assert (await call(http, method, path, None, body))[0] == 401, path


@pytest.mark.parametrize("body,status", [
    ({"release": "r-none", "machines": {"percent": 10}}, 404),
    ({"release": "r-v020", "machines": {"devices": ["bm-nobody"]}}, 404),
    ({"release": "r-v020", "machines": {"owner": "nobody"}}, 404),
    ({"release": "r-v020", "machines": {"percent": 10}, "stages": [0.5, 0.2, 1.0]}, 422),
    ({"release": "r-v020", "machines": {"percent": 10}, "stages": [0.5]}, 422),
    ({"release": "r-v020", "machines": {"percent": 0}}, 422),
    ({"release": "r-v020", "machines": {"percent": 10, "owner": "a"}}, 422),
    ({"release": "r-v020", "machines": {"percent": 10}, "max_failure_rate": 2}, 422),
    ({"release": "r-v020"}, 400),
])
async def test_a_rollout_that_cannot_be_is_refused_and_nothing_kept(cloud, http, signed, body,
                                                                   status):
    await upload(http, cloud, signed)
    st, out = await call(http, "PUT", "/v1/admin/rollouts/ro-bad", cloud.admin_token, body)
    assert st == status, out
    assert (await call(http, "GET", "/v1/admin/rollouts", cloud.admin_token))[1] == {
        "rollouts": []}


async def test_the_consoles_rollouts_page_shows_each_rollouts_progress(cloud, http, signed):
    """The operator's *Rollouts* page: state, stage, done and failed, each failed machine with
    its fault code; an owner is refused it and has no link to it."""
    import re

    async def page(token: str) -> tuple[int, str]:
        async with aiohttp.ClientSession(cloud.url, headers={"Origin": cloud.url},
                                         cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post("/console/signin", data={"token": token}) as r:
                assert r.status == 200
                home = await r.text()
            async with s.get("/console/rollouts?live=0") as r:
                return r.status, home + await r.text()

    st, text = await page(cloud.admin_token)
    assert st == 200 and "No rollout yet" in text and 'href="/console/rollouts"' in text
    await upload(http, cloud, signed)
    await call(http, "PUT", "/v1/admin/rollouts/ro-page", cloud.admin_token, {
        "release": "r-v020", "machines": {"devices": FLEET[:4]}, "stages": [0.5, 1.0],
        "max_failure_rate": 0.4})
    out = (await call(http, "GET", "/v1/admin/rollouts/ro-page", cloud.admin_token))[1]
    first = [m["id"] for m in out["devices"]][:2]
    report(cloud, first[0], "r-v020", "done")
    report(cloud, first[1], "r-v020", "failed", "update_bad_hash")
    st, text = await page(cloud.admin_token)
    card = text[text.index('id="rollout-ro-page"'):]
    assert st == 200 and "release r-v020" in card and ">halted</span>" in card
    assert re.search(r"<strong>1</strong> done, <strong>1</strong> failed", card)
    assert f'href="/console/machines/{first[1]}"' in card and "update_bad_hash" in card
    assert "failure rate 50.0 %" in card and "halts over 40.0 %" in card
    # the machine's page says its update state
    async with aiohttp.ClientSession(cloud.url, headers={"Origin": cloud.url},
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.post("/console/signin", data={"token": cloud.admin_token}) as r:
            assert r.status == 200
        async with s.get(f"/console/machines/{first[1]}?live=0") as r:
            text = re.sub(r"\s+", " ", await r.text())
    assert "(update r-v020 to 0.2.0: failed, update_bad_hash)" in text
    st, out = await call(http, "POST", "/v1/admin/owners", cloud.admin_token, {"name": "al"})
    st, text = await page(out["token"])
    assert st == 403 and 'href="/console/rollouts"' not in text


# -- the device's side of the wire: the status in a report, the offer, the download ----------

SEQ0 = 1 << 20  # a device's first seq of its first boot


async def send(http, dev: str, seq: int, update: Any = None, key: str = KEY,
               **more: Any) -> tuple[int, Any]:
    """A signed report from `dev`, carrying `update` when given."""
    from brewmeter.cloud import auth

    rep = {"seq": seq, "boot": 1, "uptime_ms": 1000 + seq - SEQ0, "clock": 0,
           "counters": {"brews_total": seq - SEQ0}, **more}
    if update is not None:
        rep["update"] = update
    path, body, headers = auth.signed_report(dev, key, rep)
    async with http.post(path, data=body, headers=headers) as r:
        return r.status, await r.json()


async def fetch(http, dev: str, release_id: str, start: int, end: int, key: str = KEY,
                seq: int = SEQ0, path: str | None = None,
                **headers: str) -> tuple[int, bytes, Any]:
    """A signed range of the release's image: (status, body, the reply's headers)."""
    from brewmeter.cloud import auth
    from brewmeter.cloud.offers import IMAGE_PATH

    path = path or IMAGE_PATH % (dev, release_id)
    h = auth.signed_range(key, path, seq, start, end) | headers
    async with http.get(path, headers=h) as r:
        return r.status, await r.read(), r.headers


async def roll(http, cloud, signed, devices: list[str], stages: list[float] | None = None,
               rid: str = "ro-dl") -> list[str]:
    """The release rolled out to `devices`: the machines offered it now."""
    await upload(http, cloud, signed)
    st, out = await call(http, "PUT", f"/v1/admin/rollouts/{rid}", cloud.admin_token, {
        "release": "r-v020", "machines": {"devices": devices},
        "stages": stages or [1.0]})
    assert st == 201, out
    return [m["id"] for m in out["devices"] if m["offered"]]


def states(cloud, rid: str = "ro-dl") -> dict[str, str]:
    return {m["id"]: m["state"] for m in cloud.ledger.releasing.rollout(rid)["devices"]}


async def test_a_reports_update_status_is_recorded_and_a_malformed_one_costs_nothing(
        cloud, http, signed):
    dev = FLEET[0]
    await roll(http, cloud, signed, [dev])
    st, out = await send(http, dev, SEQ0 + 1, {"release": "r-v020", "state": "downloading",
                                               "at": 65536})
    assert st == 200 and "update" not in out  # one in hand: no offer
    assert states(cloud)[dev] == "downloading"
    assert cloud.ledger.releasing.update_of(dev)["update"]["at"] == 65536
    # malformed: the report's counts merge all the same, the status is not recorded, the
    # device is flagged, and (it said it has one in hand) no offer is made
    for n, bad in enumerate(({"release": "r-v020", "state": "installing"},
                             {"release": "r/../x", "state": "done"},
                             {"release": "r-v020", "state": "failed", "reason": "x" * 300},
                             {"release": "r-v020", "state": "downloading", "at": -1},
                             "done", [1]), 2):
        st, out = await send(http, dev, SEQ0 + n, bad)
        assert st == 200 and "update" not in out, (bad, out)
        assert cloud.ledger.device(dev)["counters"]["brews_total"] == n
    assert states(cloud)[dev] == "downloading"
    flag = {f["kind"]: f for f in cloud.ledger.device(dev)["flags"]}["bad_update_status"]
    assert flag["count"] == 6 and "update" in flag["reported"]
    # an older report arriving late does not take the state back
    st, _ = await send(http, dev, SEQ0 + 20, {"release": "r-v020", "state": "trial"})
    st, _ = await send(http, dev, SEQ0 + 10, {"release": "r-v020", "state": "verifying"})
    assert st == 200 and states(cloud)[dev] == "trial"
    st, _ = await send(http, dev, SEQ0 + 21, {"release": "r-v020", "state": "done"})
    assert cloud.ledger.releasing.rollout("ro-dl")["state"] == "complete"


async def test_the_sync_reply_offers_the_release_while_none_is_in_hand(cloud, http, signed):
    offered = await roll(http, cloud, signed, FLEET[:4], [0.5, 1.0])
    later = [d for d in FLEET[:4] if d not in offered]
    dev = offered[0]
    st, out = await send(http, dev, SEQ0 + 1)
    m = json.loads(signed["manifest"])
    assert st == 200 and out["update"] == {
        "release": "r-v020", "version": "0.2.0", "size": len(IMAGE), "sha256": m["sha256"],
        "manifest": signed["manifest"], "signature": signed["signature"],
        "url": f"/v1/devices/{dev}/releases/r-v020/image"}
    assert "update" not in (await send(http, later[0], SEQ0 + 1))[1]  # stage 2: not yet
    assert "update" not in (await send(http, FLEET[9], SEQ0 + 1))[1]  # in no rollout
    # taken: its reports carry the status, no offer comes with their replies
    for n, state in enumerate(("offered", "downloading"), 2):
        assert "update" not in (await send(http, dev, SEQ0 + n, {"release": "r-v020",
                                                                 "state": state}))[1]
    # reflashed (its record lost): no update in its report, so it is offered again
    assert (await send(http, dev, SEQ0 + 5))[1]["update"]["release"] == "r-v020"
    # a retry of the same report hears the same
    assert (await send(http, dev, SEQ0 + 5))[1]["update"]["release"] == "r-v020"
    # paused: nothing offered; resumed: offered again
    await call(http, "POST", "/v1/admin/rollouts/ro-dl/pause", cloud.admin_token)
    assert "update" not in (await send(http, dev, SEQ0 + 6))[1]
    await call(http, "POST", "/v1/admin/rollouts/ro-dl/resume", cloud.admin_token)
    assert "update" in (await send(http, dev, SEQ0 + 7))[1]
    # failed (refused, say): never offered that release again
    await send(http, dev, SEQ0 + 8, {"release": "r-v020", "state": "failed",
                                     "reason": "update_wrong_board"})
    assert "update" not in (await send(http, dev, SEQ0 + 9))[1]


def test_an_offer_goes_into_the_reply_only_where_it_fits():
    """ack, seq and config first; the offer (up to about 1,900 bytes) when it fits the
    device's 4,096 bytes with them, else in a later reply."""
    from brewmeter.cloud.ledger import CONFIG_MAX, Reply
    from brewmeter.cloud.shared import protocol as P

    offer = {"release": "r", "manifest": "m" * 1024, "signature": "s" * 344, "url": "/u" * 64}
    small = Reply(ack=[1], seq=1, config=None, update=offer, orders={"coffee-1": "placed"})
    assert small.json()["update"] == offer and small.json()["orders"]
    full = Reply(ack=[P.MAX_INT] * P.MAX_EVENTS, seq=P.MAX_INT,
                 config={"version": 1, "settings": {"x": "y" * (CONFIG_MAX - 60)}},
                 update=offer)
    assert "update" not in full.json() and len(full.encode()) <= P.MAX_REPLY


async def test_a_download_in_ranges_is_the_image_and_only_its_devices_get_it(
        cloud, http, signed):
    from brewmeter.cloud.offers import MAX_RANGE

    dev, other = (await roll(http, cloud, signed, FLEET[:2], [0.5, 1.0]))[0], FLEET[5]
    got, start = b"", 0
    while start < len(IMAGE):
        st, body, h = await fetch(http, dev, "r-v020", start, start + MAX_RANGE - 1)
        end = min(start + MAX_RANGE, len(IMAGE)) - 1  # the last range clipped to the end
        assert st == 206 and h["Content-Range"] == f"bytes {start}-{end}/{len(IMAGE)}"
        assert len(body) == end - start + 1 and int(h["Content-Length"]) == len(body)
        assert "Server" not in h  # (lean: no header a device does not read)
        got, start = got + body, end + 1
    assert got == IMAGE
    st, body, _ = await fetch(http, dev, "r-v020", 4096, 8191)  # any range, resumed anywhere
    assert (st, body) == (206, IMAGE[4096:8192])
    st, body, h = await fetch(http, dev, "r-v020", len(IMAGE) - 1, len(IMAGE) + 5)
    assert (st, body, h["Content-Range"]) == (206, IMAGE[-1:], f"bytes {len(IMAGE) - 1}-"
                                              f"{len(IMAGE) - 1}/{len(IMAGE)}")
    st, _, h = await fetch(http, dev, "r-v020", len(IMAGE), len(IMAGE) + 10)
    assert st == 416 and h["Content-Range"] == f"bytes */{len(IMAGE)}"
    for a, b in ((0, MAX_RANGE), (10, 9)):  # over 65,536 bytes; backwards
        assert (await fetch(http, dev, "r-v020", a, b))[0] == 400
    from brewmeter.cloud import auth
    from brewmeter.cloud.offers import IMAGE_PATH

    path = IMAGE_PATH % (dev, "r-v020")
    for rng in ("bytes=0-", "bytes=-100", "bytes=0-9,20-29", "items=0-9", ""):
        h = {"Range": rng, auth.SEQ_HEADER: "1",
             auth.SIG_HEADER: auth.sign(bytes.fromhex(KEY), "GET", path, 1, rng.encode())}
        async with http.get(path, headers=h) as r:
            assert r.status == 400, rng
    # refused: a wrong signature, another key, the range changed after signing, the path
    # changed after signing, a device not offered it, a release not offered
    h = auth.signed_range(KEY, path, SEQ0, 0, 99) | {"Range": "bytes=0-100"}
    async with http.get(path, headers=h) as r:
        assert r.status == 401
    assert (await fetch(http, dev, "r-v020", 0, 99, key="55" * 32))[0] == 401
    async with http.get(IMAGE_PATH % (other, "r-v020"),
                        headers=auth.signed_range(KEY, path, SEQ0, 0, 99)) as r:
        assert r.status == 401  # (signed over another path)
    assert (await fetch(http, other, "r-v020", 0, 99))[0] == 404  # not in the rollout
    nxt = [d for d in FLEET[:2] if d != dev][0]
    assert (await fetch(http, nxt, "r-v020", 0, 99))[0] == 404  # stage 2: not yet
    assert (await fetch(http, dev, "r-none", 0, 99))[0] == 404
    # paused: a device with it in hand is served on; stopped: no one
    await send(http, dev, SEQ0 + 1, {"release": "r-v020", "state": "downloading", "at": 0})
    await call(http, "POST", "/v1/admin/rollouts/ro-dl/pause", cloud.admin_token)
    assert (await fetch(http, dev, "r-v020", 0, 99))[0] == 206
    await call(http, "POST", "/v1/admin/rollouts/ro-dl/stop", cloud.admin_token)
    assert (await fetch(http, dev, "r-v020", 0, 99))[0] == 404


async def test_a_paused_rollout_serves_only_the_devices_with_it_in_hand(cloud, http, signed):
    a, b = await roll(http, cloud, signed, FLEET[:2])
    await send(http, a, SEQ0 + 1, {"release": "r-v020", "state": "downloading", "at": 0})
    await call(http, "POST", "/v1/admin/rollouts/ro-dl/pause", cloud.admin_token)
    assert (await fetch(http, a, "r-v020", 0, 9))[0] == 206
    assert (await fetch(http, b, "r-v020", 0, 9))[0] == 404  # never took it
    await send(http, a, SEQ0 + 2, {"release": "r-v020", "state": "failed",
                                   "reason": "update_bad_hash"})
    assert (await fetch(http, a, "r-v020", 0, 9))[0] == 404  # its attempt is over


async def test_a_rotated_key_signs_a_download_by_its_id(cloud, http, signed):
    dev = FLEET[0]
    await roll(http, cloud, signed, [dev])
    cloud.ledger.add_device(dev, "66" * 32, "k2", 3600)
    from brewmeter.cloud import auth
    from brewmeter.cloud.offers import IMAGE_PATH

    path = IMAGE_PATH % (dev, "r-v020")
    for key, key_id, want in (("66" * 32, "k2", 206), (KEY, None, 206), ("66" * 32, None, 401)):
        async with http.get(path, headers=auth.signed_range(key, path, 7, 0, 9, key_id)) as r:
            assert r.status == want, (key_id, want)


async def test_the_injected_faults_reach_the_download(ledger_at, signed):
    """The chaos faults of a report (faults.py) on a range too, for the device's tests: an
    error with Retry-After, a reply cut short, a flipped byte."""
    from brewmeter.cloud import Faults

    ledger = Ledger(ledger_at, now=lambda: T0)
    ledger.add_device(FLEET[0], KEY)
    faults = Faults()
    async with CloudServer(ledger, faults=faults) as c, aiohttp.ClientSession(c.url) as s:
        await roll(s, c, signed, [FLEET[0]])
        faults.script("error_503", "truncate", "garbage", None)
        st, _, h = await fetch(s, FLEET[0], "r-v020", 0, 4095)
        assert (st, h["Retry-After"]) == (503, "1")
        with pytest.raises(aiohttp.ClientPayloadError):  # cut short
            await fetch(s, FLEET[0], "r-v020", 0, 4095)
        st, body, _ = await fetch(s, FLEET[0], "r-v020", 0, 4095)
        assert st == 206 and body[0] == IMAGE[0] ^ 0xFF and body[1:] == IMAGE[1:4096]
        assert (await fetch(s, FLEET[0], "r-v020", 0, 4095))[1] == IMAGE[:4096]
    ledger.close()
