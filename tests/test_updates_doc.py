"""The update protocol (docs/protocol.yaml's UpdateOffer, ReleaseManifest and UpdateStatus,
the download; docs/updates.md) against what is built: the manifests `./brewmeter release`
makes, the firmware's refusal codes and bounds, the cloud's range limit; and it is among
what backends are checked against."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema_rs
import yaml
from brewmeter import release

ROOT = Path(__file__).resolve().parents[1]
DOC = yaml.safe_load((ROOT / "docs" / "protocol.yaml").read_text())
SCHEMAS = DOC["components"]["schemas"]
FIRMWARE = (ROOT / "firmware" / "app" / "release.py").read_text()
CODES = set(re.findall(r'"(update_[a-z_]+)"', FIRMWARE))


def _validator(name: str) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]})


def test_the_manifests_release_build_writes_are_the_documents():
    v = _validator("ReleaseManifest")
    text = release.manifest(b"\x00" * 1000, release.board_names())
    v.validate(json.loads(text))
    assert SCHEMAS["ReleaseManifest"]["required"] == sorted(json.loads(text), key=[
        "format", "version", "size", "sha256", "mpy", "micropython", "boards", "trial_s"].index)
    assert not v.is_valid({**json.loads(text), "sha256": "AB" * 32})


def test_the_offers_example_and_its_manifest_agree_and_fit_the_devices_bounds():
    from app.release import MAX_MANIFEST

    offer = SCHEMAS["UpdateOffer"]
    assert offer["properties"]["manifest"]["maxLength"] == MAX_MANIFEST
    for ex in offer["examples"]:
        _validator("UpdateOffer").validate(ex)
        m = json.loads(ex["manifest"])
        _validator("ReleaseManifest").validate(m)
        assert (m["version"], m["size"], m["sha256"]) == (ex["version"], ex["size"],
                                                          ex["sha256"])
        assert len(json.dumps({"update": ex})) < 4096 // 2  # the device's reply bound


def test_every_refusal_the_firmware_gives_is_a_documented_reason():
    assert len(CODES) == 9
    reasons = set(SCHEMAS["UpdateStatus"]["properties"]["reason"]["enum"])
    assert CODES <= reasons
    table = (ROOT / "docs" / "updates.md").read_text()
    assert CODES == set(re.findall(r"^\| `(update_[a-z_]+)` \|", table, re.M))
    for ex in SCHEMAS["UpdateStatus"]["examples"]:
        _validator("UpdateStatus").validate(ex)


def test_the_download_is_served_as_documented():
    from brewmeter.cloud.offers import IMAGE_PATH, MAX_RANGE

    assert "x-planned" not in DOC
    get = DOC["paths"][IMAGE_PATH % ("{id}", "{release}")]["get"]
    assert f"at most {MAX_RANGE} bytes" in get["description"]
    assert set(get["responses"]) == {"206", "400", "401", "404", "416", "429", "503"}
    assert SCHEMAS["ReportReply"]["properties"]["update"]["$ref"].endswith("/UpdateOffer")
    assert "UpdateStatus" in SCHEMAS["Report"]["properties"]["update"]["description"]
    table = (ROOT / "docs" / "updates.md").read_text()
    assert f"| one range | at most {MAX_RANGE:,} bytes" in table
