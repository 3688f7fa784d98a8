"""What devices say and are offered of updates (docs/updates.md): a report's UpdateStatus
kept as the machine's state (a rollout halts there), the offer its reply carries, and which
machines may download which release. The part of Releases (releases.py) the device's side
of the wire calls; the decisions are rollouts.py's."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from brewmeter.cloud import audit
from brewmeter.cloud import rollouts as R
from brewmeter.cloud.db import Conn, Database
from brewmeter.cloud.errors import Refused, Unknown
from brewmeter.cloud.records import _iso
from brewmeter.cloud.report import FAULT
from brewmeter.cloud.shared import protocol as P

# Migration 3: a device's rollouts found by its id (each report asks whether it is in one).
INDEX = "CREATE INDEX IF NOT EXISTS rollout_machines_device ON rollout_machines (device)"

# The download (docs/updates.md): the image's path (% device, release), the most bytes one
# range may ask (the device streams it through its 4 KiB buffer into flash).
IMAGE_PATH = "/v1/devices/%s/releases/%s/image"
MAX_RANGE = 65536
IN_HAND = frozenset({"offered", "downloading", "verifying", "trial"})
# Whether a device is in a rollout that runs: one indexed look-up, a subquery of the report's
# first statement (no round trip of its own), so a report costs nothing more while none runs.
ROLLING = ("EXISTS (SELECT 1 FROM rollout_machines m JOIN rollouts r ON r.id=m.rollout "
           "WHERE m.device=devices.id AND r.control='running' AND r.halted=0)")


class UnknownRelease(Unknown):
    what = "release"


class UnknownRollout(Unknown):
    what = "rollout"


class NotOffered(Refused):
    """The release is not (or no longer) offered to this device (HTTP 404)."""

    status = 404

    def __init__(self, device_id: str, release_id: str) -> None:
        super().__init__(None, f"release {release_id} is not offered to {device_id}")


def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
    rid, version, size, sha, created = row
    return {"id": rid, "version": version, "size": size, "sha256": sha,
            "created": _iso(created)}


class Offers:
    """Releases' reads and the device's side (see the module's docstring)."""

    def __init__(self, db: Database, now: Callable[[], float] = time.time) -> None:
        self.db, self.now = db, now

    @staticmethod
    def _release(c: Conn, release_id: str) -> dict[str, Any]:
        row = c.execute("SELECT id, version, size, sha256, created FROM releases WHERE id=?",
                        (release_id,)).fetchone()
        if row is None:
            raise UnknownRelease(release_id)
        return _summary(row)

    def _load(self, c: Conn, rollout_id: str) -> tuple[R.Rollout, dict[str, str]]:
        row = c.execute("SELECT r.release, r.stages, r.max_failure_rate, r.control, r.halted, "
                        "v.version FROM rollouts r JOIN releases v ON v.id=r.release "
                        "WHERE r.id=?", (rollout_id,)).fetchone()
        if row is None:
            raise UnknownRollout(rollout_id)
        release, stages, rate, control, halted, version = row
        machines, states = [], {}
        for dev, state, fw in c.execute(
                "SELECT m.device, s.state, d.fw FROM rollout_machines m "
                "LEFT JOIN update_status s ON s.device=m.device AND s.release=? "
                "LEFT JOIN devices d ON d.id=m.device WHERE m.rollout=? ORDER BY m.pos",
                (release, rollout_id)):
            machines.append(dev)
            states[dev] = R.state_of(state, fw, version)
        return R.Rollout(rollout_id, tuple(machines), tuple(json.loads(stages)), rate,
                         control, bool(halted)), states

    # -- what devices say, and what they are offered ----------------------------------------

    def record_status(self, c: Conn, device_id: str, status: dict[str, Any]) -> None:
        """A report's UpdateStatus, within the report's transaction `c`: kept as the
        device's state for that release; a rollout it is in whose failures now go over its
        threshold halts, written to the audit log as the cloud's own action. (Called by the
        report's merge with the newest report's checked `update`.)"""
        state = status.get("state")
        if state not in R.STATES[1:] or not P.is_name(status.get("release")):
            return
        reason = status.get("reason")
        reason = reason if isinstance(reason, str) and FAULT.fullmatch(reason) else None
        at = status.get("at") if type(status.get("at")) is int else None
        c.execute("INSERT INTO update_status (device, release, state, at, reason, seen) "
                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, release) DO UPDATE SET "
                  "state=excluded.state, at=excluded.at, reason=excluded.reason, "
                  "seen=excluded.seen",
                  (device_id, status["release"], state, at, reason, self.now()))
        for (rid,) in c.execute(
                "SELECT r.id FROM rollouts r JOIN rollout_machines m ON m.rollout=r.id "
                "WHERE m.device=? AND r.release=? AND r.halted=0 AND r.control<>'stopped'",
                (device_id, status["release"])).fetchall():
            r, states = self._load(c, rid)
            d = R.decide(r, states)
            if d.halt:
                c.execute("UPDATE rollouts SET halted=1 WHERE id=?", (rid,))
                audit.write(c, self.now(), "cloud", None, "rollout",
                            f"{rid}: halted by itself: {d.failed} of {d.finished} machines "
                            f"failed ({d.failure_rate:.0%}, over {r.max_failure_rate:.0%})")

    def offer_for(self, device_id: str) -> dict[str, Any] | None:
        """The release the device is offered now (its rollout running, the device in its
        current stage and not finished), with its manifest and signature: what a sync
        reply's UpdateOffer carries. None: nothing."""
        with self.db.read() as c:
            return self.offer(c, device_id)

    def offer(self, c: Conn, device_id: str) -> dict[str, Any] | None:
        """offer_for(), within the transaction `c`."""
        for rid, release in c.execute(
                "SELECT r.id, r.release FROM rollouts r JOIN rollout_machines m "
                "ON m.rollout=r.id WHERE m.device=? AND r.halted=0 AND r.control='running' "
                "ORDER BY r.id", (device_id,)).fetchall():
            r, states = self._load(c, rid)
            if device_id in R.decide(r, states).offer:
                out = self._release(c, release)
                out["manifest"], out["signature"] = c.execute(
                    "SELECT manifest, signature FROM releases WHERE id=?",
                    (release,)).fetchone()
                return {"rollout": rid, **out}
        return None

    def update_offer(self, c: Conn, device_id: str) -> dict[str, Any] | None:
        """The sync reply's UpdateOffer for the device, within the report's transaction `c`;
        None: nothing offered."""
        o = self.offer(c, device_id)
        if o is None:
            return None
        return {"release": o["id"], "version": o["version"], "size": o["size"],
                "sha256": o["sha256"], "manifest": o["manifest"],
                "signature": o["signature"], "url": IMAGE_PATH % (device_id, o["id"])}

    def _serves(self, c: Conn, device_id: str, release_id: str) -> bool:
        """Whether the device may download the release: offered it now, or with it in hand
        (a status reported for it, not finished) in a rollout that is paused."""
        o = self.offer(c, device_id)
        if o is not None:
            return o["id"] == release_id
        row = c.execute("SELECT state FROM update_status WHERE device=? AND release=?",
                        (device_id, release_id)).fetchone()
        if row is None or row[0] not in IN_HAND:
            return False
        for (rid,) in c.execute(
                "SELECT r.id FROM rollouts r JOIN rollout_machines m ON m.rollout=r.id "
                "WHERE m.device=? AND r.release=? AND r.halted=0 AND r.control='paused'",
                (device_id, release_id)).fetchall():
            if R.decide(*self._load(c, rid)).state == "paused":
                return True
        return False

    def image_range(self, device_id: str, release_id: str, start: int,
                    end: int) -> tuple[bytes, int]:
        """(the image's bytes start..end, clipped to its end; its size) of a release the
        device may download (_serves), else NotOffered. Nothing when `start` is at or past
        the size (the caller answers 416)."""
        with self.db.read() as c:
            if not P.is_name(release_id) or not self._serves(c, device_id, release_id):
                raise NotOffered(device_id, release_id)
            (size,) = c.execute("SELECT size FROM releases WHERE id=?",
                                (release_id,)).fetchone()
            if start >= size:
                return b"", size
            (data,) = c.execute("SELECT substr(image, ?, ?) FROM releases WHERE id=?",
                                (start + 1, min(end, size - 1) - start + 1,
                                 release_id)).fetchone()
            return bytes(data), size
