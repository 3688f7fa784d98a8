"""The pure firmware tests (firmware code, plain asserts, the `profile`/`meter` fixtures; no
harness, sockets nor board) also pass under the real MicroPython unix port, run by
tests/mprunner.py; it must run exactly the tests pytest collects from them, so a test or file
it silently skipped fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from brewmeter import unixport

TESTS = Path(__file__).parent
PURE = [  # FILE::TEST (each parametrize case runs), or a whole FILE
    "test_days.py::test_today_yesterday_and_offline_history",
    "test_days.py::test_undated_brews_belong_to_their_boot_until_sent",
    "test_days.py::test_history_past_its_bound_is_folded_never_dropped",
    "test_days.py::test_a_bucket_in_the_last_report_is_not_folded",
    "test_days.py::test_clock_years_ahead_then_right_folds_onto_the_real_day",
    "test_days.py::test_a_small_step_back_keeps_counting_on_the_day",
    "test_days.py::test_a_step_back_before_a_day_the_cloud_confirmed_is_the_wrong_clock",
    "test_days.py::test_a_clock_correction_moves_what_that_clock_dated_and_nothing_else",
    "test_supervisor.py::test_backoff_doubles_from_a_second_to_five_minutes",
    "test_supervisor.py::test_detail_names_the_task_and_cuts_the_message",
    "test_sync.py::test_schedule_coalesces_usage_reports_daily_and_backs_off",
    "test_sync.py::test_jitter_is_the_devices_own_and_spreads_a_fleets_retries",
    "test_sync.py::test_a_report_is_built_from_a_snapshot_alone",
    "test_sync.py::test_a_reply_becomes_the_actions_to_apply",
    "test_sync.py::test_an_open_orders_status_the_protocol_does_not_know_becomes_a_fault",
    "test_sync.py::test_parse_url",
    "test_sync.py::test_setting_reads_each_default_by_its_bare_name",
    "test_sync.py::test_hmac_sha256_matches_rfc_4231",
    "test_release_pure.py",
    "test_romslot_pure.py::test_boot_redoes_an_interrupted_copy_and_goes_back_after_the_trial_boots",
    "test_update_pure.py",
]


def _names(lines: list[str]) -> Counter[str]:
    """file::test of each test id (parametrize ids dropped: the two runners spell them apart)."""
    return Counter(Path(x.partition("[")[0]).name for x in lines)


@pytest.mark.slow
def test_pure_firmware_tests_pass_under_micropython():
    specs = [str(TESTS / s) for s in PURE]
    p = subprocess.run([unixport.micropython(), str(TESTS / "mprunner.py"), *specs],
                       capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    ran = re.findall(r"^(PASSED|FAILED) (\S+)$", p.stdout, re.M)
    assert p.returncode == 0 and ran and all(r == "PASSED" for r, _ in ran), out
    assert re.search(rf"^{len(ran)} passed, 0 failed$", p.stdout, re.M), out

    c = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                        "-p", "no:cacheprovider", *specs],
                       capture_output=True, text=True, timeout=120, cwd=TESTS.parent)
    collected = [x for x in c.stdout.splitlines() if "::" in x]
    assert c.returncode == 0 and collected, c.stdout + c.stderr
    assert _names([t for _, t in ran]) == _names(collected), out
