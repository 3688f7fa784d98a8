"""Releases for updates over the air: `brewmeter release keygen/build/sign` as a maker runs
them, and the device's checks (firmware app/release.py) on good and bad releases made with
them, under CPython and under the MicroPython unix port."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from brewmeter import release
from brewmeter.cli import main
from brewmeter.releasecheck import Facts, run_cases, write_case
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


def _keygen(path: Path) -> Path:
    assert main(["release", "keygen", "--out", str(path)]) == 0
    return Path(f"{path}.pub")


def _sign_bytes(key: Path, text: bytes) -> bytes:
    """A valid signature over any bytes (a manifest the device must still refuse)."""
    k = serialization.load_pem_private_key(key.read_bytes(), password=None)
    return k.sign(text, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]


def _flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Release cases for the device's checks, each with the refusal it must give ("ok": none),
    made with the host's keygen and sign on a 10 KiB image."""
    d = tmp_path_factory.mktemp("release")
    key, other = d / "maker.key", d / "other.key"
    pub = release.public_hex(_keygen(key))
    _keygen(other)
    image = os.urandom(10 * 1024)

    def signed(name: str, img: bytes = image, **kw) -> tuple[bytes, bytes]:
        rel = d / f"rel-{name}"
        rel.mkdir()
        (rel / release.IMAGE).write_bytes(img)
        signer = kw.pop("key", key)
        args = {"version": "0.2.0", "mpy": 6} | kw
        (rel / release.MANIFEST).write_bytes(release.manifest(img, **args))
        sig = release.sign(signer, rel / release.MANIFEST).read_bytes()
        return (rel / release.MANIFEST).read_bytes(), sig

    facts = Facts(key=pub)
    good_m, good_s = signed("good", boards=["emulator", "esp32-generic"])
    other_m, other_s = signed("other", boards=["emulator"], key=other)
    want: dict[str, str] = {}
    out = d / "cases"

    def case(name: str, expect: str, m: bytes, s: bytes | None, img: bytes = image,
             f: Facts = facts) -> None:
        write_case(out / name, f, m, s, img)
        want[name] = expect

    case("good", "ok", good_m, good_s)
    case("good_on_another_board", "ok", good_m, good_s, f=Facts(key=pub, board="esp32-generic"))
    case("image_bit_flipped", "update_bad_hash", good_m, good_s, _flip(image, 5000))
    case("image_truncated", "update_truncated", good_m, good_s, image[:-1])
    case("manifest_bit_flipped", "update_bad_signature", _flip(good_m, 30), good_s)
    case("signature_bit_flipped", "update_bad_signature", good_m, _flip(good_s, 100))
    case("signature_truncated", "update_bad_signature", good_m, good_s[:-1])
    case("unsigned", "update_bad_signature", good_m, None)
    case("signed_by_another_key", "update_bad_signature", other_m, other_s)
    case("no_release_key", "update_no_key", good_m, good_s, f=Facts(key=None))
    case("wrong_board", "update_wrong_board", *signed("board", boards=["esp32-s3-devkitc"]))
    case("older_micropython", "update_wrong_firmware", good_m, good_s,
         f=Facts(key=pub, micropython=[1, 24, 1]))
    case("other_bytecode", "update_wrong_firmware", good_m, good_s,
         f=Facts(key=pub, mpy=5))
    case("downgrade", "update_not_newer", *signed("down", boards=["emulator"], version="0.0.9"))
    case("same_version", "update_not_newer", *signed("same", boards=["emulator"],
                                                     version="0.1.0"))
    case("oversized", "update_too_big", good_m, good_s, f=Facts(key=pub, rom_bytes=8192))
    bad = b'{"format":1,"version":"0.2.0"}'
    case("signed_but_incomplete", "update_bad_manifest", bad, _sign_bytes(key, bad))
    bad = b"not json"
    case("signed_but_not_json", "update_bad_manifest", bad, _sign_bytes(key, bad))
    return out, want


def _check_here(d: Path) -> str:
    """The device's checks under CPython, as releasecheck.py runs them under MicroPython."""
    from app import release as fw

    c = json.loads((d / "case.json").read_text())
    sig = d / release.SIGNATURE
    m = fw.offer((d / release.MANIFEST).read_bytes(), sig.read_bytes() if sig.exists() else b"",
                 bytes.fromhex(c["key"]) if c["key"] else None, c["board"],
                 tuple(c["micropython"]), c["mpy"], c["running"], c["rom_bytes"])
    if isinstance(m, str):
        return m
    with open(d / release.IMAGE, "rb") as f:
        return fw.image(f, m, bytearray(4096)) or "ok"


def test_the_device_refuses_each_bad_release_under_cpython(cases):
    out, want = cases
    assert {n: _check_here(out / n) for n in want} == want


def test_the_device_refuses_each_bad_release_under_micropython(cases):
    out, want = cases
    assert run_cases(out) == want


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path, capsys):
    pub = _keygen(tmp_path / "rk")
    assert (tmp_path / "rk").stat().st_mode & 0o777 == 0o600
    before = (tmp_path / "rk").read_bytes(), pub.read_bytes()
    assert main(["release", "keygen", "--out", str(tmp_path / "rk")]) == 2
    assert "exists: not overwritten" in capsys.readouterr().err
    assert ((tmp_path / "rk").read_bytes(), pub.read_bytes()) == before
    assert len(release.public_hex(pub)) == 512


@pytest.mark.slow
def test_build_makes_the_image_flash_sh_deploys_and_sign_signs_its_manifest(tmp_path, capsys):
    from app import VERSION
    from brewmeter import flashfiles

    out = tmp_path / "rel"
    assert main(["release", "build", "--out", str(out), "--trial-s", "900"]) == 0
    image = (out / release.IMAGE).read_bytes()
    d = tmp_path / "flash"  # what flash.sh builds for a provisioned ESP32
    d.mkdir()
    prov = flashfiles.emulator_provision()
    assert image == flashfiles.build_rom(d, flashfiles.build(d, "esp32-generic", prov)).read_bytes()
    m = json.loads((out / release.MANIFEST).read_bytes())
    import hashlib

    assert m == {"format": 1, "version": VERSION, "size": len(image),
                 "sha256": hashlib.sha256(image).hexdigest(),
                 "mpy": flashfiles.mpy_cross_version()[0], "micropython": [1, 25, 0],
                 "boards": ["emulator", "esp32-generic", "esp32-s3-devkitc"], "trial_s": 900}
    # A folder that holds a release is not built over (its signature would go stale).
    assert main(["release", "build", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err

    pub = release.load_public(_keygen(tmp_path / "rk"))
    assert main(["release", "sign", "--key", str(tmp_path / "rk"),
                 str(out / release.MANIFEST)]) == 0
    sig = (out / release.SIGNATURE).read_bytes()
    assert len(sig) == 256 and release.verify(pub, (out / release.MANIFEST).read_bytes(), sig)
    # The device takes it, as built: a device running an older version.
    from app import release as fw

    n = bytes.fromhex(release.public_hex(Path(f"{tmp_path / 'rk'}.pub")))
    got = fw.offer((out / release.MANIFEST).read_bytes(), sig, n, "esp32-generic",
                   (1, 26, 0), m["mpy"], "0.0.1", 131072)
    assert isinstance(got, dict) and fw.image(open(out / release.IMAGE, "rb"), got,
                                              bytearray(4096)) is None
    # An image changed after the build: sign refuses its manifest.
    (out / release.IMAGE).write_bytes(image[:-1] + b"\x00")
    assert main(["release", "sign", "--key", str(tmp_path / "rk"),
                 str(out / release.MANIFEST)]) == 2
    assert "does not name app.romfs" in capsys.readouterr().err


def test_sign_and_build_refuse_bad_keys_and_options_clearly(tmp_path, capsys):
    (tmp_path / "m.json").write_text("{}")
    (tmp_path / "not.key").write_text("hello")
    assert main(["release", "sign", "--key", str(tmp_path / "not.key"),
                 str(tmp_path / "m.json")]) == 2
    assert "not an unencrypted PEM private key" in capsys.readouterr().err
    assert main(["release", "build", "--out", str(tmp_path / "o"), "--board", "nope"]) == 2
    assert "--board nope: no such board" in capsys.readouterr().err
    assert main(["release", "build", "--out", str(tmp_path / "o"), "--trial-s", "0"]) == 2
    assert not (tmp_path / "o").exists()


def test_the_provisioning_holds_the_release_key_and_the_device_does_not_keep_it(tmp_path):
    from app import startup
    from brewmeter import provision
    from brewmeter.flashfiles import FlashError, check_provision, device_file, emulator_provision

    pub = _keygen(tmp_path / "rk")
    hexkey = provision.read_release_key(str(pub))
    p = check_provision({**emulator_provision(), "release_key": hexkey}, "f")
    (tmp_path / "provision.json").write_bytes(device_file(p))
    assert json.loads(device_file(p))["release_key"] == hexkey  # flash.sh writes it
    assert "release_key" not in startup.load_provision(str(tmp_path / "provision.json"))
    with pytest.raises(FlashError, match="release_key"):
        check_provision({**emulator_provision(), "release_key": hexkey[:-2]}, "f")
    with pytest.raises(provision.ProvisionError, match="--release-key .*not a PEM public key"):
        provision.read_release_key(str(tmp_path / "rk"))  # the private key's file
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    for name, key in (("ed", ed25519.Ed25519PrivateKey.generate()),
                      ("rsa3072", rsa.generate_private_key(public_exponent=65537, key_size=3072))):
        (tmp_path / name).write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        with pytest.raises(provision.ProvisionError, match="--release-key .*(not an RSA key|"
                           "RSA-3072 .*verifies RSA-2048 with e=65537 only)"):
            provision.read_release_key(str(tmp_path / name))


@pytest.mark.slow
async def test_provision_new_writes_the_release_key_and_says_when_there_is_none(tmp_path):
    import asyncio

    from brewmeter.cloud.server import CloudServer
    from brewmeter.flashfiles import load_provision

    pub = _keygen(tmp_path / "rk")

    async def provision(prefix: str, *more: str) -> tuple[int, str, str]:
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "brewmeter.cli", "provision", "new", "--count", "1",
            "--prefix", prefix, "--cloud", cloud.url, "--wifi-ssid", "shop", "--out",
            str(tmp_path / prefix), *more, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "BREWMETER_ADMIN_TOKEN": cloud.admin_token})
        out, err = await p.communicate()
        return p.returncode or 0, out.decode(), err.decode()

    async with CloudServer(":memory:") as cloud:
        rc, out, err = await provision("ota", "--release-key", str(pub))
        assert rc == 0, err
        p = load_provision(str(tmp_path / "ota" / "ota-001.json"))
        assert p["release_key"] == release.public_hex(pub) and "no --release-key" not in out
        rc, out, err = await provision("plain")
        assert rc == 0 and "no --release-key: these machines will accept no update" in out
        assert "release_key" not in load_provision(str(tmp_path / "plain" / "plain-001.json"))
        rc, out, err = await provision("bad", "--release-key", str(tmp_path / "rk"))
        assert rc == 2 and "--release-key" in err and "not a PEM public key" in err
        assert not (tmp_path / "bad").exists()
