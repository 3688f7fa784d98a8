"""`brewmeter release upload | rollout | show | pause | resume | stop`: the operator's side of an
update over the air, through the cloud's admin API (docs/protocol.yaml, docs/updates.md), so
that no one has to assemble the upload's base64 body or the rollout's JSON by hand. The admin
token comes from a file, the environment or a prompt (secretargs.py), never the command line."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from brewmeter import release, secretargs
from brewmeter.provision import Admin, ProvisionError, read_ca


class RolloutError(Exception):
    pass


def upload_body(folder: Path) -> dict[str, str]:
    """The upload's body from a signed release folder: the manifest's exact text, the
    signature and the image in base64."""
    files = {n: folder / n for n in (release.MANIFEST, release.SIGNATURE, release.IMAGE)}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        hint = " (sign it first: ./brewmeter release sign)" if any(
            m.endswith(release.SIGNATURE) for m in missing) else ""
        raise RolloutError(f"{missing[0]}: no such file{hint}")
    return {"manifest": files[release.MANIFEST].read_bytes().decode(),
            "signature": base64.b64encode(files[release.SIGNATURE].read_bytes()).decode(),
            "image": base64.b64encode(files[release.IMAGE].read_bytes()).decode()}


def machines(args: argparse.Namespace) -> dict[str, Any]:
    if args.device:
        return {"devices": args.device}
    if args.owner:
        return {"owner": args.owner}
    return {"percent": args.percent}


def summary(r: dict[str, Any]) -> str:
    """One rollout's progress, as an operator reads it."""
    lines = [f"rollout {r['id']}: release {r['release']}, {r['state']}, stage {r['stage']} of "
             f"{len(r['stages'])}, {r['targets']} machines: {r['done']} done, {r['failed']} "
             f"failed, {r['offered']} offered (failure rate {r['failure_rate']:.2f}, halts "
             f"over {r['max_failure_rate']:.2f})"]
    for d in r.get("devices", []):
        if d["state"] != "none" or d["offered"]:
            why = f" ({d['reason']})" if d.get("reason") else ""
            lines.append(f"  {d['id']}: {d['state']}{why}")
    return "\n".join(lines)


def _call(admin: Admin, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
    code, got = admin._call(method, path, body)  # noqa: SLF001 - the one admin client
    if code not in (200, 201):
        raise RolloutError(f"{method} {path}: {code} {got.get('error', got)}")
    return got


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        token = secretargs.need(args, secretargs.ADMIN_TOKEN)
        admin = Admin(args.cloud, token, read_ca(args.ca_cert))
        if args.action == "upload":
            _call(admin, "PUT", f"/v1/admin/releases/{args.id}", upload_body(Path(args.folder)))
            print(f"uploaded release {args.id}; next: ./brewmeter release rollout NAME "
                  f"--release {args.id} --cloud {args.cloud}")
            return 0
        path = f"/v1/admin/rollouts/{args.name}"
        if args.action == "rollout":
            body = {"release": args.release, "machines": machines(args),
                    "stages": args.stages, "max_failure_rate": args.max_failure_rate}
            _call(admin, "PUT", path, body)
        elif args.action in ("pause", "resume", "stop"):
            _call(admin, "POST", f"{path}/{args.action}")
        print(summary(_call(admin, "GET", path)))
    except (RolloutError, ProvisionError, secretargs.SecretError) as e:
        print(f"brewmeter release {args.action}: {e}", file=sys.stderr)
        return 2
    return 0


def _stages(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("stages are fractions, e.g. 0.01,0.1,1") from None


def _cloud(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud", required=True, help="the cloud's base URL")
    secretargs.add(p, secretargs.ADMIN_TOKEN)
    p.add_argument("--ca-cert", metavar="FILE",
                   help="PEM file of the CA the cloud's TLS certificate chains to (https)")


def add_arguments(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action
    p = sub.add_parser("upload", help="upload a signed release to the cloud",
                       allow_abbrev=False)
    p.add_argument("folder", metavar="DIR", help="release build's folder, signed")
    p.add_argument("--id", required=True, help="the release's id in the cloud (a name)")
    _cloud(p)
    p = sub.add_parser("rollout", help="roll an uploaded release out to machines, in stages",
                       allow_abbrev=False)
    p.add_argument("name", metavar="NAME", help="the rollout's id (a name)")
    p.add_argument("--release", required=True, help="the uploaded release's id")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--percent", type=float, default=100,
                     help="this share of the fleet (default 100)")
    who.add_argument("--device", action="append", metavar="ID",
                     help="this machine (again for more)")
    who.add_argument("--owner", help="this owner's machines")
    p.add_argument("--stages", type=_stages, default=[0.01, 0.1, 1], metavar="F,F,...",
                   help="cumulative fractions of its machines, the last 1 (default "
                   "0.01,0.1,1)")
    p.add_argument("--max-failure-rate", type=float, default=0.05, metavar="R",
                   help="halt by itself when more than this share of finished machines "
                   "failed (default 0.05)")
    _cloud(p)
    for action, what in (("show", "a rollout's progress and each machine's update state"),
                         ("pause", "offer no more until resumed"), ("resume", "offer again"),
                         ("stop", "end a rollout for good")):
        p = sub.add_parser(action, help=what, allow_abbrev=False)
        p.add_argument("name", metavar="NAME", help="the rollout's id")
        _cloud(p)
