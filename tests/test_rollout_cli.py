"""`brewmeter release upload | rollout | show | pause | resume | stop` as an operator runs
them: the CLI as a subprocess against a real cloud, the release made by `release` itself."""

from __future__ import annotations

from brewmeter import release
from brewmeter.cloud.server import CloudServer
from test_provision import brewmeter

IMAGE = bytes(range(256)) * 20 + b"end"


def _release(d) -> None:  # noqa: ANN001 - a pytest tmp_path
    release.keygen(d / "release.key")
    (d / release.IMAGE).write_bytes(IMAGE)
    (d / release.MANIFEST).write_bytes(release.manifest(IMAGE, ["emulator"], version="0.2.0",
                                                        mpy=6))


async def test_an_operator_uploads_rolls_out_watches_and_stops_from_the_command_line(tmp_path):
    _release(tmp_path)
    async with CloudServer(":memory:") as cloud:
        for dev in ("bm-a", "bm-b"):
            cloud.ledger.add_device(dev, "ab" * 32)
        env = {"BREWMETER_ADMIN_TOKEN": cloud.admin_token}
        at = ("--cloud", cloud.url)
        rc, _, err = await brewmeter("release", "upload", str(tmp_path), "--id", "r-1", *at,
                                     env=env)
        assert rc == 2 and "manifest.sig: no such file (sign it first" in err
        release.sign(tmp_path / "release.key", tmp_path / release.MANIFEST)
        rc, out, err = await brewmeter("release", "upload", str(tmp_path), "--id", "r-1", *at,
                                       env=env)
        assert rc == 0 and "uploaded release r-1" in out, err
        with cloud.ledger.db.read() as c:  # the cloud holds the very image and manifest
            image, = c.execute("SELECT image FROM releases WHERE id='r-1'").fetchone()
        assert bytes(image) == IMAGE

        rc, out, err = await brewmeter(
            "release", "rollout", "spring", "--release", "r-1", "--device", "bm-a",
            "--device", "bm-b", "--stages", "0.5,1", "--max-failure-rate", "0.2", *at, env=env)
        assert rc == 0, err
        assert out.splitlines()[0] == (
            "rollout spring: release r-1, running, stage 1 of 2, 2 machines: 0 done, "
            "0 failed, 1 offered (failure rate 0.00, halts over 0.20)")
        rc, out, _ = await brewmeter("release", "pause", "spring", *at, env=env)
        assert rc == 0 and ", paused, " in out and "0 offered" in out
        rc, out, _ = await brewmeter("release", "resume", "spring", *at, env=env)
        assert rc == 0 and ", running, " in out
        rc, out, _ = await brewmeter("release", "stop", "spring", *at, env=env)
        assert rc == 0 and ", stopped, " in out
        rc, out, _ = await brewmeter("release", "show", "spring", *at, env=env)
        assert rc == 0 and ", stopped, " in out

        # What the cloud refuses is said, with its reason, and nothing else happens.
        rc, _, err = await brewmeter("release", "rollout", "autumn", "--release", "r-9", *at,
                                     env=env)
        assert rc == 2 and "PUT /v1/admin/rollouts/autumn: " in err and "Traceback" not in err
        rc, _, err = await brewmeter("release", "show", "autumn", *at, env=env)
        assert rc == 2 and "404" in err
        rc, _, err = await brewmeter("release", "show", "spring", *at,
                                     env={"BREWMETER_ADMIN_TOKEN": "wrong"})
        assert rc == 2 and "refused the admin token" in err and "wrong" not in err
        rc, _, err = await brewmeter("release", "show", "spring", *at,
                                     env={"BREWMETER_ADMIN_TOKEN": ""})
        assert rc == 2 and "--admin-token-file" in err
        assert cloud.admin_token not in err + out
