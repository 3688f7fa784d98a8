"""The web console over plain HTTP (no browser): sign-in and its cookie, sign-out, the owner's
scope on pages, CSRF (the form's token, and the Origin or Referer of a POST), and that a
change made from a page is in the audit log. The browser tests are test_console_browser.py."""

from __future__ import annotations

import re

import aiohttp
import pytest
from brewmeter.cloud import CloudServer, Ledger

ALICE_DEV, BOB_DEV = "bm-alice01", "bm-bob01"
KEY = "33" * 32


@pytest.fixture
async def cloud(ledger_at):
    ledger = Ledger(ledger_at, now=lambda: 1_773_000_000.0)
    for dev, owner in ((ALICE_DEV, "alice"), (BOB_DEV, "bob")):
        ledger.add_device(dev, KEY)
        ledger.add_owner(owner)
        ledger.assign(dev, owner)
    async with CloudServer(ledger) as c:
        yield c
    ledger.close()


async def signed_in(cloud: CloudServer, token: str) -> tuple[aiohttp.ClientSession, str]:
    """A client session signed in with `token`, and the CSRF token of its pages."""
    http = aiohttp.ClientSession(cloud.url, headers={"Origin": cloud.url},
                                 cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post("/console/signin", data={"token": token}) as r:
        assert r.status == 200 and r.url.path == "/console/"
        page = await r.text()
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m
    return http, m.group(1)


async def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_ends_it(cloud):
    alice = cloud.ledger.add_owner("alice")
    async with aiohttp.ClientSession(cloud.url, headers={"Origin": cloud.url},
                                 cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get("/console/", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/signin"
        async with http.post("/console/signin", data={"token": "wrong"}) as r:
            assert r.status == 401 and "not an operator" in await r.text()
        async with http.post("/console/signin", data={"token": alice},
                             allow_redirects=False) as r:
            assert r.status == 303
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        async with http.get("/console/") as r:
            page = await r.text()
        assert ALICE_DEV in page and BOB_DEV not in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore
        async with http.post("/console/signout", data={"csrf": csrf}) as r:
            assert r.url.path == "/console/signin"
        async with http.get("/console/", allow_redirects=False) as r:
            assert r.status == 303  # the session is gone


async def test_an_owner_gets_404_for_another_owners_machine_and_its_forms(cloud):
    http, csrf = await signed_in(cloud, cloud.ledger.add_owner("alice"))
    async with http:
        for path in (f"/console/machines/{BOB_DEV}", f"/console/machines/{BOB_DEV}/invoice",
                     "/console/machines/bm-nobody"):
            async with http.get(path) as r:
                assert r.status == 404, path
        async with http.post(f"/console/machines/{BOB_DEV}/pause",
                             data={"csrf": csrf, "paused": "1"}) as r:
            assert r.status == 404
    assert not cloud.ledger.rules(BOB_DEV)["paused"]


async def test_a_form_from_another_origin_or_without_the_token_is_refused(cloud):
    http, csrf = await signed_in(cloud, cloud.ledger.add_owner("alice"))
    path = f"/console/machines/{ALICE_DEV}/pause"
    async with http:
        for headers, data in (({"Origin": "http://evil.example"}, {"csrf": csrf}),
                              ({"Origin": "null"}, {"csrf": csrf}),
                              ({"Origin": "http://127.0.0.1:1"}, {"csrf": csrf}),
                              ({"Origin": cloud.url}, {"csrf": "guess"}),
                              ({"Origin": cloud.url}, {})):
            async with http.post(path, data={**data, "paused": "1"}, headers=headers) as r:
                assert r.status == 403, headers
                assert "refused" in await r.text()
        # No Origin: the Referer decides (a page of this site, or another).
        http.headers.pop("Origin")
        async with http.post(path, data={"csrf": csrf, "paused": "1"},
                             headers={"Referer": "http://evil.example/x"}) as r:
            assert r.status == 403
        async with http.post(path, data={"csrf": csrf, "paused": "1"}) as r:
            assert r.status == 403  # neither: refused
        assert not cloud.ledger.rules(ALICE_DEV)["paused"]
        assert [a["action"] for a in cloud.ledger.audit_log(ALICE_DEV)] == ["assign"]
        async with http.post(path, data={"csrf": csrf, "paused": "1"},
                             headers={"Referer": cloud.url + f"/console/machines/{ALICE_DEV}"}
                             ) as r:
            assert r.status == 200 and "All ordering paused" in await r.text()
    assert cloud.ledger.rules(ALICE_DEV)["paused"]


async def test_rules_from_the_page_reach_the_desired_config_and_the_audit_log(cloud):
    http, csrf = await signed_in(cloud, cloud.ledger.add_owner("alice"))
    path = f"/console/machines/{ALICE_DEV}/rules"
    form = {"csrf": csrf, "auto_coffee": "1", "ask_first": "1", "orders_month": "2",
            "lead_days": "7"}  # filter, descaler and tablets unticked
    async with http:
        async with http.post(path, data=form) as r:
            assert r.status == 200 and "Rules saved" in await r.text()
        for bad in ({"orders_month": "many"}, {"lead_days": "0"}):
            async with http.post(path, data={**form, **bad}) as r:
                assert r.status == 400 and "nothing changed" in await r.text()
        async with http.get(f"/console/machines/{ALICE_DEV}") as r:
            page = await r.text()
    assert cloud.ledger.device(ALICE_DEV)["config"]["desired"]["settings"] == {
        "lead_days": 7, "auto_coffee": 1, "auto_filter": 0, "auto_descaler": 0,
        "auto_tablets": 0, "ask_first": 1, "orders_month": 2}
    (entry, _assign) = cloud.ledger.audit_log(ALICE_DEV)
    assert entry["who"] == "owner:alice" and entry["action"] == "rules"
    assert "orders_month=2" in entry["detail"] and "auto_filter=0" in entry["detail"]
    assert "orders_month=2" in page  # the audit log on the machine's page
    assert 'http-equiv="refresh"' in page  # live


async def test_the_operator_sees_every_machine(cloud):
    http, _ = await signed_in(cloud, cloud.admin_token)
    async with http:
        async with http.get("/console/") as r:
            page = await r.text()
        assert ALICE_DEV in page and BOB_DEV in page and "The fleet" in page
        async with http.get(f"/console/machines/{BOB_DEV}/invoice?month=2026-03") as r:
            assert r.status == 200 and "no plan" in await r.text()
        async with http.get(f"/console/machines/{BOB_DEV}/invoice?month=March") as r:
            assert r.status == 400


async def test_a_new_token_or_a_revoke_ends_every_session_of_the_old_one(cloud):
    token = cloud.ledger.add_owner("alice")
    alice1, _ = await signed_in(cloud, token)
    alice2, _ = await signed_in(cloud, token)  # a second browser
    async with alice1, alice2:
        cloud.ledger.add_owner("alice")  # a new token (as POST /v1/admin/owners gives)
        for http in (alice1, alice2):
            async with http.get("/console/", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/console/signin"
            async with http.post(f"/console/machines/{ALICE_DEV}/pause",
                                 data={"paused": "1"}) as r:
                assert r.status == 403
    assert not cloud.ledger.rules(ALICE_DEV)["paused"]

    alice, _ = await signed_in(cloud, cloud.ledger.add_owner("alice"))
    op, csrf = await signed_in(cloud, cloud.admin_token)
    async with alice, op:
        async with op.get("/console/") as r:
            assert 'href="/console/owners"' in await r.text()  # the operator's header
        async with op.get("/console/owners") as r:
            page = await r.text()
        assert 'action="/console/owners/alice/revoke"' in page
        async with op.post("/console/owners/alice/revoke", data={"csrf": "guess"}) as r:
            assert r.status == 403  # the form's CSRF token, as every form
        async with alice.get("/console/") as r:
            assert r.status == 200 and ALICE_DEV in await r.text()  # still signed in
        async with op.post("/console/owners/alice/revoke", data={"csrf": csrf}) as r:
            page = await r.text()
        assert r.status == 200 and "alice&#39;s token is revoked" in page
        assert "token revoked for owner alice" in page  # the owners' audit log
        async with alice.get("/console/", allow_redirects=False) as r:
            assert r.status == 303  # her session ended with her token
        async with op.post("/console/owners/nobody/revoke", data={"csrf": csrf}) as r:
            assert r.status == 404
        async with op.get("/console/owners?done=revoked&name=bob") as r:
            assert "token is revoked" not in await r.text()  # a link cannot say it of bob
    (entry, *_) = cloud.ledger.audit_log(None)
    assert (entry["who"], entry["action"], entry["detail"]) == (
        "operator", "owner", "token revoked for owner alice")
    assert cloud.ledger.owner_of(ALICE_DEV) == "alice"


async def test_an_owner_cannot_see_the_owners_page_or_revoke(cloud):
    http, csrf = await signed_in(cloud, cloud.ledger.add_owner("alice"))
    async with http:
        async with http.get("/console/") as r:
            assert "/console/owners" not in await r.text()
        async with http.get("/console/owners") as r:
            assert r.status == 403 and "operator" in await r.text()
        async with http.post("/console/owners/bob/revoke", data={"csrf": csrf}) as r:
            assert r.status == 403
    assert [o["revoked"] for o in cloud.ledger.owners()] == [False, False]


UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
# A value for each path parameter of the app's routes (a route with a new one: add it here).
SAMPLES = {"id": ALICE_DEV, "order": "coffee-1", "decision": "approve", "name": "alice",
           "release": "r-1", "rollout": "ro-1"}


async def test_every_unsafe_route_refuses_a_request_without_session_csrf_or_this_origin(
        cloud):
    """Every unsafe route the app has (enumerated, so a route added later is in it) outside
    the JSON API refuses, before its handler changes anything: no session, a session without
    its CSRF token or with another, and a request from another site (sign-in: that alone,
    as it has no session yet). The JSON API takes no cookie: a console session and its CSRF
    token are no credentials there."""
    routes = sorted({(r.method, r.resource.canonical) for r in cloud.app.router.routes()
                     if r.method in UNSAFE and r.resource is not None})
    console = [(m, p) for m, p in routes if not p.startswith("/v1/")]
    assert ("POST", "/console/machines/{id}/pause") in console and len(console) >= 6
    alice = cloud.ledger.add_owner("alice")
    audit = [cloud.ledger.audit_log(d) for d in (None, ALICE_DEV, BOB_DEV)]
    op, csrf = await signed_in(cloud, cloud.admin_token)  # the operator may do anything
    other, other_csrf = await signed_in(cloud, cloud.admin_token)  # a second session
    anon = aiohttp.ClientSession(cloud.url, headers={"Origin": cloud.url})
    own, evil = {"Origin": cloud.url}, {"Origin": "http://evil.example"}
    async with op, other, anon:
        for method, path in routes:
            url = path.format_map(SAMPLES)
            if path.startswith("/v1/"):
                async with op.request(method, url, data={"csrf": csrf}) as r:
                    assert r.status == 401, (method, path)
                continue
            cases = [(op, evil, {"csrf": csrf}, "another site")]
            if path != "/console/signin":
                cases += [(anon, own, {"csrf": csrf}, "not signed in"),
                          (op, own, {}, "CSRF token"),
                          (op, own, {"csrf": "guess"}, "CSRF token"),
                          (op, own, {"csrf": other_csrf}, "CSRF token")]
            for http, headers, data, why in cases:
                async with http.request(method, url, data={**data, "paused": "1"},
                                        headers=headers, allow_redirects=False) as r:
                    assert r.status == 403 and why in await r.text(), (method, path, why)
        async with op.get("/console/", allow_redirects=False) as r:
            assert r.status == 200  # not signed out
    assert [cloud.ledger.audit_log(d) for d in (None, ALICE_DEV, BOB_DEV)] == audit
    assert not cloud.ledger.rules(ALICE_DEV)["paused"]
    assert cloud.ledger.owner_of_token(alice) == "alice"  # not revoked
