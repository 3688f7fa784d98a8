"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright for
Python (never Playwright's own browser downloads: tools/chromium.sh installs Chromium). Behind
it the emulated cloud with six weeks of a household's reports: the firmware's Device and
Syncer under CPython on the virtual clock, syncing over HTTP on 127.0.0.1
(brewmeter.runs.household), with ask-first orders its owner stops approving near the end.

A screenshot of each page goes to $BREWMETER_SCREENSHOTS (else the test's tmp_path)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from app import protocol, wallclock
from brewmeter import standins
from brewmeter.clock import VirtualClock
from brewmeter.cloud import Ledger, Merchant
from brewmeter.cloud.server import CloudServer, cloud_thread
from brewmeter.onmicropython import replay
from brewmeter.profiles import load_profile
from brewmeter.runs import household
from brewmeter.standins.hostfs import MemFS

pytestmark = [pytest.mark.browser, pytest.mark.slow]
playwright_api = pytest.importorskip("playwright.sync_api")

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOME, BOB = household.DEVICE, "bm-bob01"
DAYS, STOP_APPROVING = 45, 40  # the owner approves ask-first orders until day 40
PRICE = 0.35


class Month:
    """The household's machine and the cloud it reports to, on the virtual clock."""

    def __init__(self, cloud: CloudServer, home: Any, clock: VirtualClock,
                 brews_by_date: dict[str, int]) -> None:
        self.cloud, self.home, self.clock, self.brews_by_date = cloud, home, clock, brews_by_date
        self.rng = random.Random(7)
        self.day = DAYS

    def sync(self) -> str:
        """The machine's next sync, now."""
        wallclock.set_unix(self.home.wall())
        return off_the_loop(self.home.syncer.sync_once)

    def live(self, days: int) -> None:
        """The household goes on for `days` more days (brewing, refilling, syncing)."""
        async def run() -> None:
            for _ in range(days):
                await self.home.day(self.day, self.rng, set())
                self.day += 1
        off_the_loop(run)


def off_the_loop(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run(fn()) in a thread of its own: Playwright's sync API has a loop in this
    one."""
    out: list[T] = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(fn())))
    t.start()
    t.join()
    assert out, "the run failed: see the thread's traceback above"
    return out[0]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def month(request: pytest.FixtureRequest) -> Iterator[Month]:
    """The month, on either engine (conftest.py's postgres: a real PostgreSQL)."""
    db = ":memory:" if request.param == "sqlite" else request.getfixturevalue(
        "postgres").new_schema()
    clock = VirtualClock(ticks_start=replay.ticks(0))
    old = standins.clock
    standins.set_clock(clock)
    plan = household.Plan(days=DAYS, seed=1, settings={"ask_first": 1}, approve_after_h=6,
                          merchant=Merchant(ship_after_s=86400, deliver_after_s=86400))
    ledger = Ledger(db, now=lambda: household.START_WALL + clock.ms / 1000,
                    merchant=plan.merchant)
    try:
        with cloud_thread(ledger, devices=[(HOME, household.KEY), (BOB, household.KEY)]
                          ) as cloud:
            ledger.set_config(HOME, plan.settings)
            ledger.set_plan(HOME, {"price_per_brew": PRICE, "currency": "EUR"})
            for name, dev in (("alice", HOME), ("bob", BOB)):
                ledger.add_owner(name)
                ledger.assign(dev, name)
            home = household._Home(plan, load_profile("emulator"), MemFS(), cloud, clock)
            rows: dict[str, int] = {}

            async def run() -> None:
                rng = random.Random(plan.seed)
                for d in range(DAYS):
                    if d == STOP_APPROVING:
                        plan.approve_after_h = None  # away: orders wait for approval
                    await home.day(d, rng, set())
                    row = home.row(d)
                    rows[row["date"]] = row["brews"]

            asyncio.run(run())
            bob_report(ledger)
            yield Month(cloud, home, clock, rows)
    finally:
        standins.set_clock(old)
        wallclock.synced = False
        ledger.close()


def bob_report(ledger: Ledger) -> None:
    """Bob's machine: one report of a few days, a fault among its events."""
    now = int(ledger.now())
    report = {"seq": 1, "boot": 1, "uptime_ms": 1000, "clock": now,
              "counters": {"brews_total": 9, "brews": {"espresso": 9}},
              "days": [{"day": now // 86400 - i, "brews_total": 3} for i in range(3)],
              "events": [{"id": 1, "kind": "fault", "code": "long_brew", "detail": "espresso"}],
              "supplies": {"coffee": {"cycle": 0, "pct": 70, "days": 12}}}
    ledger.apply_report(BOB, json.dumps(report).encode())


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = Path(os.environ.get("BREWMETER_SCREENSHOTS") or tmp_path_factory.mktemp("screens"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1100, "height": 900})
        try:
            ctx.set_default_timeout(15_000)
            yield ctx.pages[0] if ctx.pages else ctx.new_page()
        finally:
            ctx.close()


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(url + "/console/signin")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/console/")


def within(seconds: float, ok: Callable[[], bool], page: Any) -> bool:
    """Whether ok() comes true within `seconds`, the page left to itself meanwhile."""
    for _ in range(int(seconds * 2)):
        try:
            if ok():
                return True
        except playwright_api.Error:  # the page was reloading
            pass
        page.wait_for_timeout(500)
    return False


def api(url: str, method: str, path: str, token: str, body: Any = None) -> int:
    req = urllib.request.Request(url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_an_owner_approves_pauses_and_the_machine_applies_it(month, page, shots):
    url, ledger = month.cloud.url, month.cloud.ledger
    alice = ledger.add_owner("alice")  # a fresh token for this test
    page.goto(url + "/console/signin")
    page.screenshot(path=shots / "signin.png")
    sign_in(page, url, alice)
    cookie = next(c for c in page.context.cookies() if c["name"] == "brewmeter_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    rows = page.locator("#fleet tr").all_inner_texts()
    assert any(HOME in r for r in rows) and not any(BOB in r for r in rows)
    page.screenshot(path=shots / "fleet-owner.png", full_page=True)

    waiting = [o for o in ledger.orders(HOME) if o["status"] == "needs_approval"]
    assert waiting, "the month should end with an order waiting for approval"
    page.click(f"a[href='/console/machines/{HOME}']")
    page.wait_for_selector("#waiting")
    assert page.locator("svg.chart rect.bar").count() == 90
    page.screenshot(path=shots / "machine.png", full_page=True)
    page.click(f"#waiting form[action$='/{waiting[0]['order']}/approve'] button")
    page.wait_for_selector(".notice")
    assert "approved" in page.inner_text(".notice")
    assert next(o for o in ledger.orders(HOME) if o["order"] == waiting[0]["order"])[
        "status"] == "placed"

    page.click("#controls button:has-text('Pause all ordering')")
    page.wait_for_selector(".notice")
    assert page.locator("#config").inner_text().count("applied after the next sync") == 1
    assert protocol.setting(month.home.device.config, "orders_month") != 0
    assert month.sync() == "ok"  # the machine's next sync brings the desired config
    assert protocol.setting(month.home.device.config, "orders_month") == 0
    assert month.sync() == "ok"  # ... and the one after tells the cloud it applied it
    page.goto(url + f"/console/machines/{HOME}?live=0")
    assert "in effect" in page.inner_text("#config")
    assert "ordering paused" in page.inner_text("h1")
    audit = page.inner_text("#audit")
    assert "owner:alice\trules\tordering paused" in audit
    assert "owner:alice\tapprove\t" + waiting[0]["order"] in audit
    page.screenshot(path=shots / "machine-paused.png", full_page=True)
    # Paused, it orders nothing, though its coffee runs out and the owner refills it.
    before = {o["order"] for o in ledger.orders(HOME)}
    month.live(10)
    assert {o["order"] for o in ledger.orders(HOME)} == before


class _Evil(BaseHTTPRequestHandler):
    """Another site (another origin: a different port) with a form aimed at the console."""
    target = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = (f"<form id=f method=post action='{self.target}'>"
                "<input name=paused value=1><input name=csrf value=guess></form>"
                "<script>document.getElementById('f').submit()</script>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_owner_cannot_see_another_machine_provision_or_be_forged(month, page, shots):
    url, ledger = month.cloud.url, month.cloud.ledger
    alice = ledger.add_owner("alice")
    sign_in(page, url, alice)
    r = page.goto(url + f"/console/machines/{BOB}")
    assert r is not None and r.status == 404
    r = page.goto(url + f"/console/machines/{BOB}/invoice?month=2026-01")
    assert r is not None and r.status == 404
    assert api(url, "GET", f"/v1/devices/{BOB}", alice) == 404
    assert api(url, "PUT", "/v1/admin/devices/bm-new02", alice, {"key": "44" * 32}) == 403
    assert api(url, "PUT", f"/v1/admin/devices/{HOME}/config", alice, {"settings": {}}) == 403
    assert ledger.device("bm-new02") is None

    rules, audit = ledger.rules(HOME), ledger.audit_log(HOME)
    _Evil.target = url + f"/console/machines/{HOME}/pause"
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with page.expect_response(_Evil.target) as resp:
            page.goto(f"http://127.0.0.1:{evil.server_port}/")
        assert resp.value.status == 403
        assert "another site" in page.inner_text("body")
        page.screenshot(path=shots / "cross-site-refused.png")
    finally:
        evil.shutdown()
    assert ledger.rules(HOME) == rules and ledger.audit_log(HOME) == audit


def test_the_operator_sees_the_fleet_and_a_months_invoice(month, page, shots):
    url = month.cloud.url
    sign_in(page, url, month.cloud.admin_token)
    rows = page.locator("#fleet tr").all_inner_texts()
    assert any(HOME in r and "alice" in r for r in rows)
    assert any(BOB in r and "bob" in r for r in rows)
    # Live: the machine brews and reports on; the open page shows it within seconds, by
    # itself (it reloads every few seconds).
    home_row = f"#fleet tr:has(a[href='/console/machines/{HOME}'])"
    before = page.inner_text(home_row)
    month.live(2)
    assert within(15, lambda: page.inner_text(home_row) != before and int(
        page.inner_text(home_row + " td:nth-child(5)")) > 0, page)
    page.screenshot(path=shots / "fleet-operator.png", full_page=True)
    page.goto(url + f"/console/machines/{HOME}/invoice?month=2026-01")
    ledger = month.cloud.ledger
    days = ledger.days(HOME, date(2026, 1, 1), date(2026, 1, 31))["days"]
    january = sum(d["brews_total"] for d in days)
    # The cloud's days hold every brew the machine counted (its lifetime counter) ...
    every = ledger.days(HOME, date(2026, 1, 1), date(2026, 12, 31))["days"]
    assert sum(d["brews_total"] for d in every) == ledger.device(HOME)["counters"][
        "brews_total"]
    # ... and January's are the household's January (a brew running past midnight on the
    # 31st is February's on the machine's day, January's in the household's diary).
    diary = sum(n for d, n in month.brews_by_date.items() if d.startswith("2026-01"))
    assert january > 100 and abs(january - diary) <= 1
    assert page.inner_text("#total-brews") == str(january)
    assert page.inner_text("#total") == f"{january * PRICE:.2f} EUR"
    page.screenshot(path=shots / "invoice.png", full_page=True)
    page.goto(url + f"/console/machines/{BOB}")  # the operator opens every machine
    assert "long_brew" in page.inner_text("#events")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(url + f"/console/machines/{HOME}?live=0")
    page.screenshot(path=shots / "machine-phone.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    assert date.fromisoformat(max(month.brews_by_date)) > date(2026, 2, 1)


def test_the_operator_revokes_an_owners_token_from_the_owners_page(month, page, shots):
    url, ledger = month.cloud.url, month.cloud.ledger
    carol = ledger.add_owner("carol")
    assert api(url, "GET", "/v1/devices", carol) == 200
    sign_in(page, url, month.cloud.admin_token)
    page.click("header a[href='/console/owners']")
    row = "#owners tr:has-text('carol')"
    assert "valid" in page.inner_text(row)
    page.click(row + " button:has-text('Revoke token')")
    page.wait_for_url(url + "/console/owners?done=revoked&name=carol")
    assert "carol's token is revoked" in page.inner_text("[role=status]")
    assert "revoked" in page.inner_text(row)
    assert "token revoked for owner carol" in page.inner_text("#audit")
    page.screenshot(path=shots / "owners.png", full_page=True)
    assert api(url, "GET", "/v1/devices", carol) == 401
