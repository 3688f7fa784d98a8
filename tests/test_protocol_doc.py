"""docs/protocol.yaml against the one definition (firmware/app/protocol.py) and the cloud:
its own examples parse with the cloud's parsers, and every limit, name, format and rule it
states is the protocol's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from brewmeter.cloud import auth, billing
from brewmeter.cloud.report import NAME, parse_report
from brewmeter.cloud.shared import is_device_id, parse_order
from brewmeter.cloud.shared import protocol as P

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DOC: dict[str, Any] = yaml.safe_load((ROOT / "docs" / "protocol.yaml").read_text())
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
# The settings as {name: (minimum, maximum, default)}, from the firmware's one string.
SCHEMA = {k: P.limits(k) for k in P.SETTINGS.split()[::4]}
TEXT: str = DOC["info"]["description"]


def test_the_documents_report_examples_parse():
    examples = SCHEMAS["Report"]["examples"]
    assert examples
    for ex in examples:
        r = parse_report(auth.encode_report(ex), str(ex["seq"]))
        assert r.seq == ex["seq"] and len(r.days) == len(ex.get("days", []))
        assert r.event_ids == sorted(e["id"] for e in ex.get("events", []))
        for e in r.order_events:  # an order of its item and cycle, as the cloud decides it
            assert e["order"] == P.order_id(e["item"], e["cycle"])
            assert parse_order(e["order"]) == (e["item"], e["cycle"])


def test_the_documents_field_examples_parse():
    for oid in SCHEMAS["OrderId"]["examples"]:
        assert parse_order(oid) is not None
    # ASCII digits only ("[0-9]"): str.isdigit takes these, and int() reads the first as 3
    for oid in ("coffee-\u0663", "coffee-\u00b2", "coffee-", "-3", "Coffee-3", "coffee-3-1"):
        assert parse_order(oid) is None, oid
    for kind in SCHEMAS["Event"]["properties"]["kind"]["examples"]:
        assert NAME.fullmatch(kind)
    per_brew = {k: v["examples"][0] for k, v in
                SCHEMAS["Plan"]["oneOf"][0]["properties"].items() if "examples" in v}
    monthly = {k: v["examples"][0] for k, v in
               SCHEMAS["Plan"]["oneOf"][1]["properties"].items() if "examples" in v}
    assert billing.parse_plan(per_brew)["price_per_brew_cents"] == 35
    assert billing.parse_plan(monthly)["monthly_fee_cents"] == 2000
    defaults = {k: v["default"] for k, v in SCHEMAS["Settings"]["properties"].items()
                if "default" in v}
    assert P.check_settings(defaults) is None


def test_the_documents_limits_are_the_protocols():
    report = SCHEMAS["Report"]["properties"]
    assert report["days"]["maxItems"] == P.MAX_DAYS
    assert report["events"]["maxItems"] == P.MAX_EVENTS
    assert report["orders"]["maxProperties"] == P.MAX_ORDERS
    assert report["supplies"]["maxProperties"] == P.MAX_SUPPLIES
    assert report["fw"]["maxLength"] == P.MAX_FW
    assert SCHEMAS["Count"]["maximum"] == P.MAX_INT
    conflict = SCHEMAS["SeqConflict"]["allOf"][1]["properties"]["seq"]
    assert (conflict["minimum"], conflict["maximum"]) == (0, P.MAX_NAMED_SEQ) == (0, 2**52 - 1)
    assert {"const": 0} in report["clock"]["anyOf"]
    assert {"minimum": P.CLOCK_MIN} in report["clock"]["anyOf"]
    rejected = SCHEMAS["ConfigState"]["properties"]["rejected"]["properties"]
    assert rejected["reason"]["maxLength"] == P.MAX_TEXT
    assert SCHEMAS["Name"]["pattern"] == f"^[A-Za-z0-9_-]{{1,{P.MAX_NAME}}}$"
    assert set(P.NAME_CHARS) == set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert set(SCHEMAS["Bucket"]["properties"]) >= set(P.BUCKET_KEYS)
    assert set(SCHEMAS["OrderStatus"]["enum"]) == set(P.STATUSES) - {"requested"} | \
        {P.UNKNOWN}
    # The prose says the same numbers.
    for n in (P.MAX_BODY, P.MAX_FIELDS, P.MAX_DAYS, P.MAX_EVENTS, P.MAX_ORDERS,
              P.MAX_SUPPLIES, P.MAX_TEXT, P.MAX_REPLY):
        assert re.search(rf"\b{n}\b", TEXT), n
    assert "[0, 2^53-1]" in TEXT and f"{{1,{P.MAX_NAME}}}" in TEXT
    assert f"never one above {P.MAX_NAMED_SEQ} (2^52-1)" in " ".join(TEXT.split())


def test_the_documents_settings_are_the_protocols():
    props = SCHEMAS["Settings"]["properties"]
    assert SCHEMAS["Settings"]["additionalProperties"] is False
    assert set(props) == set(SCHEMA) | set(P.PER_KIND)
    for k, (lo, hi, default) in SCHEMA.items():
        assert (props[k]["minimum"], props[k]["maximum"], props[k]["default"]) == \
            (lo, hi, default), k
    for k, (lo, hi) in P.PER_KIND.items():
        assert props[k]["maxProperties"] == P.MAX_KINDS
        v = props[k]["additionalProperties"]
        assert (v["minimum"], v["maximum"]) == (lo, hi)


def test_the_documents_paths_and_headers_are_the_protocols():
    paths = DOC["paths"]
    assert P.REPORT_PATH % "{id}" in paths and P.HEALTH_PATH in paths
    params = [p["name"] for p in paths[P.REPORT_PATH % "{id}"]["post"]["parameters"]
              if "name" in p]
    assert P.SEQ_HEADER in params
    assert DOC["components"]["securitySchemes"]["deviceSignature"]["name"] == P.SIG_HEADER
    assert 'MESSAGE = METHOD "\\n" PATH "\\n" SEQ "\\n" BODY' in TEXT
    assert P.message("POST", "/p", 7, b"{}") == b"POST\n/p\n7\n{}"


def test_the_documents_contract_rules_are_the_protocols():
    """The rules a backend must follow, each with the protocol's own numbers and names."""
    flat = " ".join(TEXT.split())
    for n in (P.MAX_LINE, P.MAX_HEADERS, P.MAX_REPLY, P.REPLY_MS, P.REFUSED_S,
              P.REFUSED_RETRY_S, P.MAX_TEXT):
        assert re.search(rf"\b{n}\b", flat), n
    for words in ("Content-Length", "chunked", "Redirects are not followed", "Retry-After",
                  "`sync_refused`", "`order_status`", "`supplies_reset`",
                  f"as `{P.OTHER}` after a reboot",
                  f"`{P.KEY_HEADER}: <key_id>`", f'`"{P.RESTORED}": true`',
                  "Versions only move forward", "Partial counters", "never take a report as a "
                  "snapshot", "a report without `fw` keeps the one stored",
                  "Per-device serialisation", "one at a time", "base path", "gateway",
                  f"closes {billing.CLOSE_DAYS} days after its last day", "adjustment line",
                  "never reprices the past", "Undated buckets", "folded bucket"):
        assert words in flat, words
    assert SCHEMAS["DesiredConfig"]["properties"][P.RESTORED]["type"] == "boolean"
    assert SCHEMAS["Invoice"]["properties"]["adjustments"]["type"] == "array"
    provision = DOC["paths"]["/v1/admin/devices/{id}"]["put"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]
    assert provision["key_id"]["pattern"] == SCHEMAS["Name"]["pattern"]
    # Every status the device keeps an order open for, or closes it on, is named.
    for st in P.STATUSES:
        assert f"`{st}`" in flat, st
    assert P.refused(400) and P.refused(401) and P.refused(301)
    assert not (P.refused(200) or P.refused(409) or P.refused(429) or P.refused(503))


# Device ids (is_device_id, the host's: flash.sh, the cloud and the field tools take these alike)
GOOD_IDS = ("bm-240ac4000001", "bm-emu-1a2b3c", "cafe-001", "bm-x", "a_b", "X9-", "a" * 32)
BAD_IDS = ("ab", "a" * 33, "../x", "..", ".bm", "bm.x", "a/b", "-bm", "_bm", "bm x", "bm%2f",
           "bm-\u00e91", "", None, 123)


def test_device_id_rule():
    for i in GOOD_IDS:
        assert is_device_id(i), i
    for i in BAD_IDS:
        assert not is_device_id(i), i


def test_one_device_id_rule_in_the_document_flash_sh_the_cloud_and_the_field_tools():
    from brewmeter.flashfiles import FlashError, check_provision, emulator_provision

    pattern = DOC["components"]["parameters"]["DeviceId"]["schema"]["pattern"]
    assert f"`{pattern.strip('^$')}`" in TEXT  # the prose states the same rule
    for i in GOOD_IDS + BAD_IDS:
        ok = is_device_id(i)
        assert ok == (i in GOOD_IDS), i
        assert (isinstance(i, str) and re.fullmatch(pattern, i) is not None) == ok, i
        try:
            auth.check_device_id(i)  # type: ignore[arg-type]
            cloud = True
        except ValueError:
            cloud = False
        try:
            check_provision(emulator_provision() | {"device_id": i}, "p.json")
            flash = True
        except FlashError as e:
            assert "field 'device_id'" in str(e)
            flash = False
        assert cloud == flash == ok, i
