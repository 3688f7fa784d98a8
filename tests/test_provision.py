"""`brewmeter provision new` as a maker runs it: the CLI as a subprocess against a real cloud."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aiohttp
import pytest
from brewmeter.cloud.server import CloudServer
from brewmeter.flashfiles import FlashError, check_provision, load_provision


async def brewmeter(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brewmeter.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await p.communicate()
    return p.returncode or 0, out.decode(), err.decode()


async def test_new_registers_each_key_and_writes_files_flash_sh_takes(tmp_path):
    token = tmp_path / "token"
    async with CloudServer(":memory:") as cloud:
        token.write_text(cloud.admin_token + "\n")
        rc, out, err = await brewmeter(
            "provision", "new", "--count", "3", "--prefix", "cafe", "--cloud", cloud.url,
            "--admin-token-file", str(token), "--wifi-ssid", "shop", "--out",
            str(tmp_path / "out"), env={"BREWMETER_WIFI_PASSWORD": "s3cret"})
        assert rc == 0, err
        files = sorted((tmp_path / "out").glob("*.json"))
        assert [f.name for f in files] == ["cafe-001.json", "cafe-002.json", "cafe-003.json"]
        assert "cafe-001.json" in out
        provs = [load_provision(str(f)) for f in files]  # what flash.sh --provision checks
        assert len({p["key"] for p in provs}) == 3
        assert provs[0]["wifi"] == {"ssid": "shop", "password": "s3cret"}
        assert oct(files[0].stat().st_mode & 0o777) == "0o600"
        for p in provs:
            assert cloud.ledger.add_device(p["device_id"], p["key"]) is False  # known, same key
        assert cloud.admin_token not in out + err

        # Again: the files are there and the cloud knows the ids: nothing is replaced.
        rc, _, err = await brewmeter(
            "provision", "new", "--count", "1", "--prefix", "cafe", "--cloud", cloud.url,
            "--wifi-ssid", "shop", "--out", str(tmp_path / "other"),
            env={"BREWMETER_ADMIN_TOKEN": cloud.admin_token})
        assert rc == 2 and "already knows cafe-001" in err
        assert not (tmp_path / "other").exists()


async def test_bad_token_missing_token_and_bad_ca_file_are_clear_errors(tmp_path):
    pem = tmp_path / "ca.pem"
    pem.write_text("not a certificate")
    async with CloudServer(":memory:") as cloud:
        base = ("provision", "new", "--count", "1", "--prefix", "x1", "--cloud", cloud.url,
                "--wifi-ssid", "s", "--out", str(tmp_path / "o"))
        env = {"BREWMETER_ADMIN_TOKEN": ""}
        rc, _, err = await brewmeter(*base, env=env)
        assert rc == 2 and "--admin-token-file" in err and "Traceback" not in err
        rc, _, err = await brewmeter(*base, env={"BREWMETER_ADMIN_TOKEN": "wrong"})
        assert rc == 2 and "refused the admin token" in err and "wrong" not in err
        # The token on the command line, where ps shows it: refused, and not repeated.
        rc, _, err = await brewmeter(*base, "--admin-token", cloud.admin_token, env=env)
        assert rc == 2 and "not taken on the command line" in err
        assert "--admin-token-file FILE or $BREWMETER_ADMIN_TOKEN" in err
        assert cloud.admin_token not in err
        env = {"BREWMETER_ADMIN_TOKEN": cloud.admin_token}
        rc, _, err = await brewmeter(*base, "--ca-cert", str(pem), env=env)
        assert rc == 2 and "no PEM certificate" in err
        rc, _, err = await brewmeter(*base, "--ca-cert", str(tmp_path / "missing.pem"), env=env)
        assert rc == 2 and "cannot read" in err
        assert cloud.admin_token not in err
        assert not (tmp_path / "o").exists()
        async with aiohttp.ClientSession(cloud.url) as s, \
                s.get("/v1/devices/x1-001", headers=cloud.admin_headers) as r:
            assert r.status == 404  # nothing registered


def test_keys_are_hex_in_either_case():
    p = {"device_id": "dev-1", "key": "AB" * 32, "wifi": {"ssid": "s"},
         "cloud_url": "http://127.0.0.1:1", "service_pin": "123456"}
    assert check_provision(p, "f")["key"] == "AB" * 32
    with pytest.raises(FlashError, match="64 hex digits"):
        check_provision({**p, "key": "G" * 64}, "f")


async def test_provisioning_files_are_0600_from_their_first_byte(tmp_path, no_narrowing):
    from brewmeter import provision

    out = tmp_path / "out"
    async with CloudServer(":memory:") as cloud:
        args = argparse.Namespace(count=2, prefix="sec", start=1, out=str(out),
                                  admin_token_file=None, ca_cert=None, wifi_ssid="shop",
                                  ntp=None, cloud=cloud.url)
        files = await asyncio.to_thread(provision.new, args, {
            "BREWMETER_WIFI_PASSWORD": "pw", "BREWMETER_ADMIN_TOKEN": cloud.admin_token})
    assert [f.name for f in files] == ["sec-001.json", "sec-002.json"]
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600, f
        assert load_provision(str(f))["device_id"] == f.stem
    assert out.stat().st_mode & 0o777 == 0o700  # the folder it made: nobody else lists it


async def test_a_link_where_a_file_goes_is_refused_and_nothing_written_through_it(tmp_path):
    from brewmeter import provision

    out, stolen = tmp_path / "out", tmp_path / "stolen.json"
    out.mkdir()
    (out / "ln-001.json").symlink_to(stolen)  # dangling: exists() says no
    async with CloudServer(":memory:") as cloud:
        args = argparse.Namespace(count=1, prefix="ln", start=1, out=str(out),
                                  admin_token_file=None, ca_cert=None, wifi_ssid="shop",
                                  ntp=None, cloud=cloud.url)
        with pytest.raises(provision.ProvisionError, match="already exists"):
            await asyncio.to_thread(provision.new, args,
                                    {"BREWMETER_ADMIN_TOKEN": cloud.admin_token})
        assert cloud.ledger.device("ln-001") is None  # refused before registering
    assert not stolen.exists()
