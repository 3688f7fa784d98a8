"""Releases and staged rollouts (docs/updates.md): the signed releases an operator uploaded,
the rollouts that bring one to named machines in stages, and each machine's update state as
its reports say it. A service over the ledger's database; the decisions are rollouts.py's.

What the cloud checks of a release: the manifest is one the devices read (at most 1,024
bytes, JSON, the fields and types of docs/protocol.yaml's ReleaseManifest), the image is the
one it names (its size and SHA-256), and the signature is 256 bytes. It cannot check the
signature itself: the cloud holds no release key (a cloud broken into must not make a
release devices accept), and the devices check it before anything is written. What the
devices say and are offered (the statuses, the offer, the download): offers.py."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from brewmeter.cloud import audit
from brewmeter.cloud import rollouts as R
from brewmeter.cloud.db import Conn
from brewmeter.cloud.errors import (
    BadValue,
    Refused,
    StateConflict,
    UnknownDevice,
    UnknownOwner,
)
from brewmeter.cloud.offers import Offers, _summary
from brewmeter.cloud.records import _iso
from brewmeter.cloud.shared import is_device_id
from brewmeter.cloud.shared import protocol as P

SCHEMA = """
-- A signed release: the manifest's exact bytes, its signature (base64), the image.
CREATE TABLE IF NOT EXISTS releases (
    id TEXT PRIMARY KEY, version TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    manifest TEXT NOT NULL, signature TEXT NOT NULL, image BLOB NOT NULL,
    created REAL NOT NULL);
-- A rollout of a release to machines (target: how they were named), in stages (JSON list of
-- fractions); control: running, paused or stopped (the operator's); halted: by itself.
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, release TEXT NOT NULL, target TEXT NOT NULL, stages TEXT NOT NULL,
    max_failure_rate REAL NOT NULL, control TEXT NOT NULL, halted INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL);
-- Its machines, in the rollout's order (rollouts.order): stage k is the first ones.
CREATE TABLE IF NOT EXISTS rollout_machines (
    rollout TEXT NOT NULL, pos INTEGER NOT NULL, device TEXT NOT NULL,
    PRIMARY KEY (rollout, pos)) WITHOUT ROWID;
-- A machine's update state for a release, from its newest report that carried one.
CREATE TABLE IF NOT EXISTS update_status (
    device TEXT NOT NULL, release TEXT NOT NULL, state TEXT NOT NULL, at INTEGER,
    reason TEXT, seen REAL NOT NULL,
    PRIMARY KEY (device, release)) WITHOUT ROWID;
"""
MAX_MANIFEST = 1024
MAX_IMAGE = 1 << 20  # over any board's ROM slot; the device refuses one over its own
SIGNATURE_BYTES = 256  # RSA-2048
MAX_TRIAL_S = 7 * 86400
VERSION = re.compile(r"[0-9]+(\.[0-9]+)*")
SHA256 = re.compile(r"[0-9a-f]{64}")
TARGETS = ("percent", "devices", "owner")
MAX_LISTED = 10_000  # machines a rollout may list by id
DEFAULT_STAGES = [0.01, 0.1, 1.0]
DEFAULT_MAX_FAILURE_RATE = 0.05


class BadRelease(Refused):
    """Well formed, but not a release or a rollout the cloud can keep (HTTP 422)."""

    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


def check_manifest(text: str) -> dict[str, Any]:
    """The manifest's fields, if it is one a device reads (docs/updates.md); BadRelease."""
    if len(text.encode()) > MAX_MANIFEST:
        raise BadRelease(f"manifest: over {MAX_MANIFEST} bytes, more than a device reads")
    try:
        m = json.loads(text)
    except ValueError:
        raise BadRelease("manifest: not JSON") from None
    if not isinstance(m, dict):
        raise BadRelease("manifest: not a JSON object")

    def is_int(v: Any) -> bool:
        return type(v) is int

    checks = {
        "format": lambda v: v == 1 and is_int(v),
        "version": lambda v: isinstance(v, str) and len(v) <= 32 and VERSION.fullmatch(v),
        "size": lambda v: is_int(v) and 1 <= v <= MAX_IMAGE,
        "sha256": lambda v: isinstance(v, str) and SHA256.fullmatch(v),
        "mpy": is_int,
        "micropython": lambda v: isinstance(v, list) and 1 <= len(v) <= 3 and all(
            is_int(x) and x >= 0 for x in v),
        "boards": lambda v: isinstance(v, list) and v and all(P.is_name(b) for b in v),
        "trial_s": lambda v: is_int(v) and 1 <= v <= MAX_TRIAL_S,
    }
    for field, ok in checks.items():
        if field not in m or not ok(m[field]):
            raise BadRelease(f"manifest: {field} missing or not a ReleaseManifest's")
    return m


def check_signature(sig: str) -> None:
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise BadRelease("signature: not base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise BadRelease(f"signature: {len(raw)} bytes, not {SIGNATURE_BYTES} (RSA-2048)")


class Releases(Offers):
    """Releases, rollouts and update states (see the module's docstring)."""

    # -- releases ----------------------------------------------------------------------------

    def add_release(self, release_id: str, manifest: str, signature: str, image: bytes,
                    who: str) -> tuple[dict[str, Any], bool]:
        """Keep a signed release: (its summary, whether it is new). The same upload again
        is no change; another under the same id is a StateConflict. BadRelease when the
        manifest is not a device's, the image not the one it names, the signature not 256
        bytes."""
        if not P.is_name(release_id):
            raise BadValue(f"a release's id: 1-{P.MAX_NAME} of letters, digits, _ and -")
        m = check_manifest(manifest)
        check_signature(signature)
        if len(image) != m["size"]:
            raise BadRelease(f"the image is {len(image)} bytes, the manifest says {m['size']}")
        if hashlib.sha256(image).hexdigest() != m["sha256"]:
            raise BadRelease("the image's SHA-256 is not the manifest's")
        with self.db.tx() as c:
            row = c.execute("SELECT manifest, signature FROM releases WHERE id=?",
                            (release_id,)).fetchone()
            if row is not None:
                if tuple(row) != (manifest, signature):
                    raise StateConflict(f"release {release_id} exists, with another manifest "
                                        "or signature: a new release takes a new id")
            else:
                c.execute("INSERT INTO releases (id, version, size, sha256, manifest, "
                          "signature, image, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (release_id, m["version"], m["size"], m["sha256"], manifest,
                           signature, image, self.now()))
                audit.write(c, self.now(), who, None, "release",
                            f"{release_id}: version {m['version']}, {m['size']} bytes, "
                            f"sha256 {m['sha256']}")
            return self._release(c, release_id), row is None

    def releases(self) -> list[dict[str, Any]]:
        with self.db.read() as c:
            return [_summary(r) for r in c.execute(
                "SELECT id, version, size, sha256, created FROM releases ORDER BY created, id")]

    def release(self, release_id: str) -> dict[str, Any]:
        with self.db.read() as c:
            return self._release(c, release_id)

    # -- rollouts ----------------------------------------------------------------------------

    def add_rollout(self, rollout_id: str, release_id: str, target: dict[str, Any],
                    stages: list[float], max_failure_rate: float, who: str) -> dict[str, Any]:
        """Start a rollout of a release to the machines `target` names ({"percent": P} of
        the fleet, {"devices": [ids]}, {"owner": NAME}'s) in `stages` (see rollouts.py).
        Returns rollout(). Refuses (nothing kept) an id in use, an unknown release, device
        or owner, no machine, a machine in another rollout still running or paused."""
        if not P.is_name(rollout_id):
            raise BadValue(f"a rollout's id: 1-{P.MAX_NAME} of letters, digits, _ and -")
        why = R.check_stages(stages)
        if why:
            raise BadRelease(why)
        if isinstance(max_failure_rate, bool) or not isinstance(
                max_failure_rate, int | float) or not 0 <= max_failure_rate <= 1:
            raise BadRelease("max_failure_rate: a fraction, 0 to 1")
        with self.db.tx() as c:
            self._release(c, release_id)
            if c.execute("SELECT 1 FROM rollouts WHERE id=?", (rollout_id,)).fetchone():
                raise StateConflict(f"rollout {rollout_id} exists: a new rollout takes a new id")
            machines = R.order(rollout_id, self._targets(c, rollout_id, target))
            if not machines:
                raise StateConflict("the rollout names no machine")
            busy = self._busy(c, machines)
            if busy:
                raise StateConflict(f"{busy[1]} is in rollout {busy[0]}, still running or "
                                    "paused: stop it first")
            c.execute("INSERT INTO rollouts (id, release, target, stages, max_failure_rate, "
                      "control, created) VALUES (?, ?, ?, ?, ?, 'running', ?)",
                      (rollout_id, release_id, json.dumps(target), json.dumps(stages),
                       float(max_failure_rate), self.now()))
            c.executemany("INSERT INTO rollout_machines (rollout, pos, device) VALUES (?, ?, ?)",
                          [(rollout_id, i, d) for i, d in enumerate(machines)])
            audit.write(c, self.now(), who, None, "rollout",
                        f"{rollout_id}: release {release_id} to {len(machines)} machines "
                        f"({json.dumps(target)}), stages {stages}, halt over "
                        f"{max_failure_rate:.0%} failed")
            return self._progress(c, rollout_id, True)

    @staticmethod
    def _targets(c: Conn, rollout_id: str, target: dict[str, Any]) -> list[str]:
        if not isinstance(target, dict) or len(target) != 1 or next(iter(target)) not in TARGETS:
            raise BadRelease('machines: one of {"percent": P}, {"devices": [...]}, '
                             '{"owner": NAME}')
        kind, value = next(iter(target.items()))
        if kind == "percent":
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0 < value <= 100):
                raise BadRelease("percent: above 0, at most 100")
            fleet = [d for (d,) in c.execute("SELECT id FROM devices")]
            return R.percent_of(rollout_id, fleet, value)
        if kind == "devices":
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_LISTED or not all(
                    is_device_id(d) for d in value):
                raise BadRelease(f"devices: 1 to {MAX_LISTED} device ids")
            known = {d for (d,) in c.execute("SELECT id FROM devices")}
            missing = sorted(set(value) - known)
            if missing:
                raise UnknownDevice(missing[0])
            return value
        if not P.is_name(value):
            raise BadRelease("owner: an owner's name")
        if c.execute("SELECT 1 FROM owners WHERE name=?", (value,)).fetchone() is None:
            raise UnknownOwner(value)
        return [d for (d,) in c.execute("SELECT device FROM owner_devices WHERE owner=?",
                                        (value,))]

    def _busy(self, c: Conn, machines: list[str]) -> tuple[str, str] | None:
        """(rollout, device): one of `machines` in a rollout still running or paused."""
        want = set(machines)
        for (rid,) in c.execute("SELECT id FROM rollouts WHERE control<>'stopped' AND "
                                "halted=0 ORDER BY id").fetchall():
            r, states = self._load(c, rid)
            if R.decide(r, states).state in ("running", "paused"):
                both = sorted(want.intersection(r.machines))
                if both:
                    return rid, both[0]
        return None

    def _progress(self, c: Conn, rollout_id: str, machines: bool) -> dict[str, Any]:
        r, states = self._load(c, rollout_id)
        d = R.decide(r, states)
        release, target, created = c.execute(
            "SELECT release, target, created FROM rollouts WHERE id=?", (rollout_id,)).fetchone()
        out: dict[str, Any] = {
            "id": rollout_id, "release": release, "machines": json.loads(target),
            "stages": list(r.stages), "max_failure_rate": r.max_failure_rate,
            "created": _iso(created), "state": d.state, "stage": d.stage,
            "targets": len(r.machines),
            "stage_machines": [R.head(len(r.machines), f) for f in r.stages],
            "offered": len(d.offer), "done": d.done, "failed": d.failed,
            "failure_rate": round(d.failure_rate, 4)}
        if machines:
            reasons = dict(c.execute(
                "SELECT s.device, s.reason FROM update_status s JOIN rollout_machines m "
                "ON m.device=s.device WHERE m.rollout=? AND s.release=? AND "
                "s.reason IS NOT NULL", (rollout_id, release)))
            offered = set(d.offer)
            out["devices"] = [
                {"id": m, "state": states[m], "offered": m in offered,
                 "reason": reasons.get(m)} for m in r.machines]
        return out

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """The rollout's progress, with each machine's state in the rollout's order."""
        with self.db.read() as c:
            return self._progress(c, rollout_id, True)

    def rollouts(self) -> list[dict[str, Any]]:
        """Every rollout's progress, newest first."""
        with self.db.read() as c:
            ids = [i for (i,) in c.execute("SELECT id FROM rollouts ORDER BY created DESC, "
                                           "id DESC").fetchall()]
            return [self._progress(c, i, False) for i in ids]

    def control(self, rollout_id: str, action: str, who: str) -> dict[str, Any]:
        """Pause, resume or stop the rollout; StateConflict when that does not apply now."""
        with self.db.tx() as c:
            r, states = self._load(c, rollout_id)
            try:
                new = R.control(r.control, R.decide(r, states).state, action)
            except ValueError as e:
                raise StateConflict(str(e)) from None
            c.execute("UPDATE rollouts SET control=? WHERE id=?", (new, rollout_id))
            audit.write(c, self.now(), who, None, "rollout", f"{rollout_id}: {action}")
            return self._progress(c, rollout_id, True)

    def update_of(self, device_id: str) -> dict[str, Any]:
        """What the machine runs and its newest update state: what its owner may read.
        UnknownDevice."""
        with self.db.read() as c:
            row = c.execute("SELECT fw FROM devices WHERE id=?", (device_id,)).fetchone()
            if row is None:
                raise UnknownDevice(device_id)
            st = c.execute("SELECT s.release, v.version, s.state, s.at, s.reason, s.seen "
                           "FROM update_status s LEFT JOIN releases v ON v.id=s.release "
                           "WHERE s.device=? ORDER BY s.seen DESC, s.release LIMIT 1",
                           (device_id,)).fetchone()
        update = None if st is None else {
            "release": st[0], "version": st[1], "state": st[2], "at": st[3], "reason": st[4],
            "seen": _iso(st[5])}
        return {"id": device_id, "fw": row[0], "update": update}
