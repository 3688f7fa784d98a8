"""Roles over the JSON API: the operator's token sees and does everything; an owner's token
only their own machines (another owner's is 404, as an unknown one), never provisioning,
config or plans (403); every change lands in the machine's audit log; pausing and the order
rules reach the device through the desired config."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from brewmeter.cloud import CloudServer, Ledger, auth

ALICE_DEV, BOB_DEV = "bm-alice01", "bm-bob01"
KEY = "33" * 32
T0 = 1_773_000_000.0


@pytest.fixture
async def cloud(ledger_at):
    ledger = Ledger(ledger_at, now=lambda: T0)
    for dev in (ALICE_DEV, BOB_DEV):
        ledger.add_device(dev, KEY)
    async with CloudServer(ledger) as c:
        yield c
    ledger.close()


async def call(http: aiohttp.ClientSession, method: str, path: str, token: str,
               body: Any = None) -> tuple[int, Any]:
    async with http.request(method, path, json=body,
                            headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


async def owners(http: aiohttp.ClientSession, cloud: CloudServer) -> tuple[str, str]:
    tokens = []
    for name, dev in (("alice", ALICE_DEV), ("bob", BOB_DEV)):
        st, out = await call(http, "POST", "/v1/admin/owners", cloud.admin_token,
                             {"name": name})
        assert st == 201 and out["name"] == name
        tokens.append(out["token"])
        st, _ = await call(http, "PUT", f"/v1/admin/devices/{dev}/owner", cloud.admin_token,
                           {"owner": name})
        assert st == 200
    return tokens[0], tokens[1]


async def order_waiting(http: aiohttp.ClientSession, dev: str) -> None:
    report = {"seq": 1, "boot": 1, "uptime_ms": 1000, "clock": 0, "counters": {},
              "supplies": {"coffee": {"cycle": 3}},
              "events": [{"id": 1, "kind": "order_requested", "order": "coffee-3",
                          "item": "coffee", "cycle": 3, "ask": 1}]}
    path, body, headers = auth.signed_report(dev, KEY, report)
    async with http.post(path, data=body, headers=headers) as r:
        assert (await r.json())["orders"] == {"coffee-3": "needs_approval"}


async def test_an_owner_sees_only_their_machines(cloud, http):
    alice, bob = await owners(http, cloud)
    assert (await call(http, "GET", "/v1/devices", alice))[1] == {"devices": [ALICE_DEV]}
    assert (await call(http, "GET", "/v1/devices", cloud.admin_token))[1] == {
        "devices": [ALICE_DEV, BOB_DEV]}
    for path in ("", "/days", "/events", "/orders", "/audit", "/rules"):
        assert (await call(http, "GET", f"/v1/devices/{ALICE_DEV}{path}", alice))[0] == 200
        st, out = await call(http, "GET", f"/v1/devices/{BOB_DEV}{path}", alice)
        assert (st, out) == (404, {"error": "unknown device"}), path
    # The same answer as for a machine that does not exist: nothing leaks.
    assert (await call(http, "GET", "/v1/devices/bm-nobody", alice))[0] == 404
    await order_waiting(http, BOB_DEV)
    st, _ = await call(http, "POST", f"/v1/admin/devices/{BOB_DEV}/orders/coffee-3/approve",
                       alice)
    assert st == 404
    assert (await call(http, "GET", f"/v1/devices/{BOB_DEV}/orders", bob))[1]["orders"][0][
        "status"] == "needs_approval"  # alice's try changed nothing


async def test_an_owner_cannot_provision_configure_price_or_assign(cloud, http):
    alice, _ = await owners(http, cloud)
    for method, path, body in (
            ("PUT", f"/v1/admin/devices/{ALICE_DEV}", {"key": "44" * 32}),
            ("PUT", "/v1/admin/devices/bm-new01", {"key": "44" * 32}),
            ("PUT", f"/v1/admin/devices/{ALICE_DEV}/config", {"settings": {}}),
            ("PUT", f"/v1/admin/devices/{ALICE_DEV}/plan", {"price_per_brew": 0.3}),
            ("PUT", f"/v1/admin/devices/{BOB_DEV}/owner", {"owner": "alice"}),
            ("POST", "/v1/admin/owners", {"name": "mallory"}),
            ("DELETE", "/v1/admin/owners/bob/token", None)):
        st, out = await call(http, method, path, alice, body)
        assert st == 403 and "operator" in out["error"], path
    assert cloud.ledger.device("bm-new01") is None
    assert cloud.ledger.owner_of(BOB_DEV) == "bob"
    assert [o["revoked"] for o in cloud.ledger.owners()] == [False, False]
    st, _ = await call(http, "GET", "/v1/devices", "not-a-token")
    assert st == 401


async def test_only_the_hash_of_a_token_is_kept_and_a_new_one_replaces_it(cloud, http):
    alice, _ = await owners(http, cloud)
    assert alice not in cloud.ledger.dump()
    st, out = await call(http, "POST", "/v1/admin/owners", cloud.admin_token, {"name": "alice"})
    assert st == 201 and out["token"] != alice
    assert (await call(http, "GET", "/v1/devices", alice))[0] == 401
    assert (await call(http, "GET", "/v1/devices", out["token"]))[0] == 200


async def test_every_change_is_in_the_audit_log(cloud, http):
    alice, _ = await owners(http, cloud)
    await order_waiting(http, ALICE_DEV)
    base = f"/v1/devices/{ALICE_DEV}"
    assert (await call(http, "POST", f"/v1/admin/devices/{ALICE_DEV}/orders/coffee-3/approve",
                       alice))[0] == 200
    assert (await call(http, "PUT", base + "/rules", alice,
                       {"paused": True, "rules": {"lead_days": 9}}))[0] == 200
    assert (await call(http, "PUT", f"/v1/admin/devices/{ALICE_DEV}/config",
                       cloud.admin_token, {"settings": {"coffee_pack": 50}}))[0] == 200
    assert (await call(http, "PUT", f"/v1/admin/devices/{ALICE_DEV}", cloud.admin_token,
                       {"key": "55" * 32, "overlap_s": 60}))[0] == 200
    st, out = await call(http, "GET", base + "/audit", alice)
    log = [(e["who"], e["action"]) for e in out["audit"]]
    assert log == [("operator", "re-key"), ("operator", "config"),
                   ("owner:alice", "rules"), ("owner:alice", "approve"),
                   ("operator", "assign")]
    assert out["audit"][2]["detail"] == "ordering paused, lead_days=9"
    assert out["audit"][3]["detail"] == "coffee-3"
    assert all(e["at"] == "2026-03-08T20:00:00+00:00" for e in out["audit"])


async def test_pause_and_rules_go_out_as_desired_config_and_resume_restores(cloud, http):
    alice, _ = await owners(http, cloud)
    base = f"/v1/devices/{ALICE_DEV}/rules"
    st, out = await call(http, "PUT", base, alice,
                         {"rules": {"orders_month": 3, "ask_first": 1}})
    assert out == {"paused": False, "rules": {
        "lead_days": 5, "auto_coffee": 1, "auto_filter": 1, "auto_descaler": 1,
        "auto_tablets": 1, "ask_first": 1, "orders_month": 3}}
    desired = cloud.ledger.device(ALICE_DEV)["config"]["desired"]
    assert desired == {"version": 1, "settings": {"orders_month": 3, "ask_first": 1}}
    st, out = await call(http, "PUT", base, alice, {"paused": True})
    assert out["paused"] and out["rules"]["orders_month"] == 3  # what resuming brings back
    assert cloud.ledger.device(ALICE_DEV)["config"]["desired"]["settings"]["orders_month"] == 0
    st, out = await call(http, "PUT", base, alice, {"paused": False})
    assert not out["paused"]
    assert cloud.ledger.device(ALICE_DEV)["config"]["desired"] == {
        "version": 3, "settings": {"orders_month": 3, "ask_first": 1}}
    for bad in ({"rules": {"coffee_pack": 5}}, {"rules": {"lead_days": 0}}, {},
                {"paused": "yes"}, {"rules": None}):
        st, out = await call(http, "PUT", base, alice, bad)
        assert st == 400 and out["error"], bad
    assert cloud.ledger.device(ALICE_DEV)["config"]["desired"]["version"] == 3


async def test_the_operator_revokes_an_owners_token_and_the_audit_log_says_so(cloud, http):
    alice, bob = await owners(http, cloud)
    st, out = await call(http, "DELETE", "/v1/admin/owners/alice/token", cloud.admin_token)
    assert (st, out) == (200, {"name": "alice", "revoked": True})
    assert (await call(http, "GET", "/v1/devices", alice))[0] == 401
    assert (await call(http, "GET", f"/v1/devices/{ALICE_DEV}", alice))[0] == 401
    assert (await call(http, "GET", "/v1/devices", bob))[0] == 200  # only alice's
    assert cloud.ledger.owner_of(ALICE_DEV) == "alice"  # her machine stays hers
    assert [(o["name"], o["revoked"]) for o in cloud.ledger.owners()] == [
        ("alice", True), ("bob", False)]
    for name, code in (("nobody", 404), ("not%20a%20name", 400)):
        st, out = await call(http, "DELETE", f"/v1/admin/owners/{name}/token",
                             cloud.admin_token)
        assert st == code and out["error"], name
    # A new token brings her back; the revoked one stays dead.
    st, out = await call(http, "POST", "/v1/admin/owners", cloud.admin_token, {"name": "alice"})
    assert (await call(http, "GET", "/v1/devices", out["token"]))[1] == {"devices": [ALICE_DEV]}
    assert (await call(http, "GET", "/v1/devices", alice))[0] == 401
    log = [(e["who"], e["detail"]) for e in cloud.ledger.audit_log(None)]
    assert log == [("operator", "token issued for owner alice"),
                   ("operator", "token revoked for owner alice"),
                   ("operator", "token issued for owner bob"),
                   ("operator", "token issued for owner alice")]
    cloud.ledger.reopen()  # a restarted cloud keeps the revoke
    assert cloud.ledger.owner_of_token(alice) is None
    assert cloud.ledger.owner_of_token(out["token"]) == "alice"
