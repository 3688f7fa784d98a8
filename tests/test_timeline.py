"""`brewmeter simulate --timeline/--plot` as a developer runs it: the CLI as a subprocess, then
the CSV read back and the PNG opened."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

DAYS = 45


@pytest.fixture(scope="module")
def year(tmp_path_factory):
    d = tmp_path_factory.mktemp("year")
    p = subprocess.run([sys.executable, "-m", "brewmeter.cli", "simulate", "--days", str(DAYS),
                        "--net-faults", "0.2", "--json", "--timeline", str(d / "t.csv"),
                        "--plot", str(d / "t.png")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return d, json.loads(p.stdout)


@pytest.mark.slow
def test_timeline_has_a_row_a_day_that_adds_up_to_the_totals(year):
    d, out = year
    with (d / "t.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["day"]) for r in rows] == list(range(1, DAYS + 1))
    assert rows[0]["date"] == "2026-01-05" and rows[-1]["date"] == "2026-02-18"
    assert sum(int(r["brews"]) for r in rows) == out["brews_total"]
    assert sum(int(r["report_failures"]) for r in rows) == out["report_failures"] > 0
    assert sum(int(r["reports"]) for r in rows) == out["reports"]
    for item in ("coffee", "filter", "descaler", "tablets"):
        levels = [int(r[f"{item}_pct"]) for r in rows]
        assert all(0 <= x <= 100 for x in levels)
    ordered = [w for r in rows for w in r["orders_requested"].split()]
    assert ordered.count("coffee") == sum(o["item"] == "coffee" for o in out["orders"]) > 0
    delivered = [w for r in rows for w in r["orders_delivered"].split()]
    assert len(delivered) == sum(o["status"] == "delivered" for o in out["orders"])
    # Coffee runs low, is ordered, delivered and refilled: its level climbs back up.
    coffee = [int(r["coffee_pct"]) for r in rows]
    assert any(b > a + 30 for a, b in zip(coffee, coffee[1:], strict=False))


def test_plot_is_a_picture_of_the_levels(year):
    from matplotlib import image

    d, _ = year
    px = image.imread(str(d / "t.png"))
    assert px.shape[:2] == (320, 720)
    rgb = px[..., :3].reshape(-1, 3)
    ink = (rgb.min(axis=1) < 0.9).mean()  # share of pixels that are not (near) white
    assert 0.03 < ink < 0.6
    colours = {tuple((c * 8).astype(int)) for c in rgb[::7]}
    assert len(colours) > 12  # lines and markers in several colours, not a blank frame


def test_bad_output_folder_is_said_before_the_simulation(tmp_path):
    p = subprocess.run([sys.executable, "-m", "brewmeter.cli", "simulate", "--timeline",
                        str(tmp_path / "nope" / "t.csv")], capture_output=True, text=True)
    assert p.returncode == 2 and "no such folder" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_chaos_says_what_each_fault_kind_did_and_ends_pass_or_fail():
    from brewmeter.cloud.server import FAULT_KINDS

    p = subprocess.run([sys.executable, "-m", "brewmeter.cli", "chaos", "--faults", "150"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for kind in FAULT_KINDS:
        row = next(x for x in lines if x.startswith(kind + " "))
        assert int(row.split()[1]) > 0  # each kind was injected, and its effect is named
    assert "error_503" in p.stdout and "HTTP 503" in p.stdout
    assert lines[-1] == ("PASS: every brew and event reached the cloud once, and the bill "
                         "matches")


def test_chaos_fail_line():
    from brewmeter.runs import chaos

    r = {"by_kind": {}, "reports": 3, "faults": 1, "power_cuts": 0, "device_brews": 5,
         "cloud_brews": 4, "billed_brews": 4, "invoice_cents": 140, "events_created": 1,
         "events_in_cloud": 1, "lost": 1, "duplicated": 0, "ok": False}
    assert chaos.text(r).splitlines()[-1].startswith("FAIL: 1 brews lost, 0 doubled")


@pytest.mark.slow
def test_powercut_table_ends_with_a_plain_pass_line():
    p = subprocess.run([sys.executable, "-m", "brewmeter.cli", "powercut"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "cpython" in lines[0] and "micropython" in lines[0]
    cases = lines[0].split()  # one column a case: each interpreter, the clock known or not
    cuts = [int(x) for x in lines[1].split()[-len(cases):]]
    assert all(c > 0 for c in cuts)
    assert lines[-1] == f"PASS: {sum(cuts)} power cuts, no brew lost or doubled, every " \
        "recovery right"
