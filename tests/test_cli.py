"""The `brewmeter` command as a user runs it: simulate and bench."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from brewmeter import bench, cli, unixport
from brewmeter.emulator.common import read_profile


def brewmeter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "brewmeter.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_simulate_same_seed_same_output_and_json():
    a = brewmeter("simulate", "--days", "30", "--seed", "7", "--json")
    b = brewmeter("simulate", "--days", "30", "--seed", "7", "--json")
    c = brewmeter("simulate", "--days", "30", "--seed", "8", "--json")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout != c.stdout
    d = json.loads(a.stdout)
    assert d["days"] == 30 and d["boots"] == 1
    assert d["brews_total"] == sum(d["brews"].values()) > 100
    assert set(d["brews"]) == {"espresso", "lungo", "hot_water"}


@pytest.mark.slow
def test_simulate_a_year_changes_filters_when_due(capsys):
    assert cli.main(["simulate", "--days", "365", "--seed", "1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["filters"] >= 2  # 150 L filters, ~330 L a year
    assert d["filter_ml"] < 150_000 and d["filter_due"] is None
    assert d["water_ml"] > d["filter_ml"]


def test_simulate_table_is_readable(capsys):
    assert cli.main(["simulate", "--days", "3"]) == 0
    out = capsys.readouterr().out
    for label in ("brews", "espresso", "rinses", "water", "pump run time", "filter due"):
        assert label in out
    assert " L" in out


def test_bad_arguments_exit_2(capsys):
    assert cli.main(["simulate", "--days", "0"]) == 2
    assert "--days" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_json_gives_the_figures(capsys):
    assert cli.main(["bench", "--json", "--only", "sim_days_per_s"]) == 0
    figures = json.loads(capsys.readouterr().out)
    # The figure asked for, and which MicroPython the run is of, with the harness's share.
    assert sorted(figures) == ["harness_heap_bytes", "interpreter", "sim_days_per_s"]
    assert figures["sim_days_per_s"] > 0
    assert figures["interpreter"] == unixport.interpreter()
    assert 0 < figures["harness_heap_bytes"] < read_profile("emulator")[0]["heap_bytes"]
    assert cli.main(["bench", "--json", "--only", "core_heap_bytes"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert 0 < figures["core_heap_bytes"] < 65536


def test_bench_table_shows_the_bands_and_the_interpreter():
    who = {"path": "/opt/mp/micropython", "version": "1.29.0-preview (x)", "pointer_bits": 32}
    out = bench.table({"app_peak_heap_bytes": 61440,
                       "app_peak_heap_bytes_band": [57344, 61440], "interpreter": who})
    peak, band, interp = out.splitlines()
    assert "61440" in peak and "<= 81920  ok" in peak
    assert band.split()[1:4] == ["57344", "-", "61440"]
    assert "/opt/mp/micropython" in interp and "32-bit" in interp
