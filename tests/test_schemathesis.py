"""docs/protocol.yaml and the server agree: Schemathesis (`st run`) against a running
`brewmeter cloud` (on SQLite and on PostgreSQL) with the admin token, every operation, the
signed report too (a hook signs as the device: tests/schemathesis_hooks.py), all its checks
and phases, stateful included, 200 examples an operation (about 6,400 cases, a few minutes
each): 0 failures. Derandomized, so a run is repeatable; BREWMETER_ST_EXAMPLES=25 makes a
quick one, 500 a longer one."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

ROOT = Path(__file__).resolve().parents[1]
DEV, KEY, TOKEN = "bm-st0001", "5a" * 32, "st-admin-token"
DOWNLOADER = "bm-st0002"  # the download's device (tests/schemathesis_hooks.py)


def admin_get(url: str, path: str) -> dict:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def orders_waiting(url: str) -> None:
    """A signed report whose two orders wait for the owner: one for approve, one for decline
    (tests/schemathesis_hooks.py sends each operation's valid order ids to its own)."""
    from brewmeter.cloud import auth

    report = {"seq": 1, "boot": 1, "uptime_ms": 1000, "clock": 0, "counters": {},
              "supplies": {"coffee": {"cycle": 3}, "tablets": {"cycle": 2}},
              "events": [{"id": 1, "kind": "order_requested", "order": "coffee-3",
                          "item": "coffee", "cycle": 3, "ask": 1},
                         {"id": 2, "kind": "order_requested", "order": "tablets-2",
                          "item": "tablets", "cycle": 2, "ask": 1}]}
    path, body, headers = auth.signed_report(DEV, KEY, report)
    req = urllib.request.Request(url + path, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["orders"] == {"coffee-3": "needs_approval",
                                                  "tablets-2": "needs_approval"}


def release_and_rollout(url: str) -> None:
    """A release and a rollout of it to the device, so the rollouts' operations meet one
    (tests/schemathesis_hooks.py names them), and another to the downloader, so the download
    meets an offered release. The signature is 256 random bytes: the cloud checks its length
    alone (devices check the rest)."""
    from brewmeter import release

    image = os.urandom(3000)
    body = {"manifest": release.manifest(image, ["emulator"], version="9.0", mpy=6).decode(),
            "signature": base64.b64encode(os.urandom(256)).decode(),
            "image": base64.b64encode(image).decode()}
    for path, doc in (("/v1/admin/releases/r-st", body),
                      ("/v1/admin/rollouts/ro-st", {"release": "r-st",
                                                    "machines": {"devices": [DEV]}}),
                      ("/v1/admin/rollouts/ro-dl", {"release": "r-st",
                                                    "machines": {"devices": [DOWNLOADER]}})):
        req = urllib.request.Request(url + path, data=json.dumps(doc).encode(), method="PUT",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201


@pytest.mark.slow
def test_the_document_and_the_server_agree(tmp_path, ledger_at):
    from brewmeter.flashfiles import emulator_provision

    for name, dev in (("dev.json", DEV), ("downloader.json", DOWNLOADER)):
        (tmp_path / name).write_text(json.dumps(emulator_provision() | {"device_id": dev,
                                                                        "key": KEY}))
    cloud = subprocess.Popen(
        [sys.executable, "-m", "brewmeter.cloud", "--port", "0", "--db", str(ledger_at),
         "--device-file", str(tmp_path / "dev.json"),
         "--device-file", str(tmp_path / "downloader.json")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "BREWMETER_ADMIN_TOKEN": TOKEN})
    try:
        assert cloud.stdout is not None
        url = re.search(r"http://127\.0\.0\.1:\d+", cloud.stdout.readline()).group(0)
        orders_waiting(url)  # so approve and decline meet real orders
        release_and_rollout(url)  # so the rollouts' operations meet one
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                   [str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
               "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "BREWMETER_ST_DEVICE": DEV,
               "BREWMETER_ST_KEY": KEY, "BREWMETER_ST_TOKEN": TOKEN,
               "BREWMETER_ST_DOWNLOADER": DOWNLOADER}
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli",
             "--config-file", str(ROOT / "tests" / "schemathesis.toml"),
             "run", str(ROOT / "docs" / "protocol.yaml"), "--url", url,
             "--phases", "examples,coverage,fuzzing,stateful", "--checks", "all",
             "--max-examples", os.environ.get("BREWMETER_ST_EXAMPLES", "200"),
             "--generation-deterministic",
             "--workers", "1", "--no-color"],
            env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        out = run.stdout + run.stderr
        print(out[out.rfind("SUMMARY"):])  # cases, failures, time: pytest -rP shows it
        assert run.returncode == 0, out[-6000:]
        assert "Tested: 30" in out and "30/30" in out  # every operation
        assert "returned only 401/403" not in out  # the signed ones signed, the download too
        # Signed reports reached the ledger (signed as the device, accepted), and approve
        # and decline each reached their order.
        device = admin_get(url, f"/v1/devices/{DEV}")
        assert device["reports"] > 1
        status = {o["order"]: o["status"] for o in device["orders"]}
        assert (status["coffee-3"], status["tablets-2"]) == ("placed", "declined")
        # The rollout's controls reached it: stopped once, refused after.
        assert admin_get(url, "/v1/admin/rollouts/ro-st")["state"] == "stopped"
    finally:
        cloud.terminate()
        cloud.wait(10)
