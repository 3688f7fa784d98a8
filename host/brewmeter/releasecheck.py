"""The firmware's release checks (app/release.py) run on the MicroPython unix port, on cases
the host writes with its own release code (brewmeter/release.py): the tests' cases, and the
bench's figures of what a verify costs (release_*)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from brewmeter import release, unixport
from brewmeter.standins import FIRMWARE

SCRIPT = unixport.ONMICROPYTHON / "releasecheck.py"


@dataclass
class Facts:
    """What the device knows of itself, as app/release.py takes it."""

    board: str = "emulator"
    micropython: list[int] = field(default_factory=lambda: [1, 26, 0])
    mpy: int = 6 | 3 << 8  # sys.implementation._mpy: bytecode v6.3
    running: str = "0.1.0"
    rom_bytes: int = 131072
    key: str | None = None  # the release key's modulus, hex (provisioning's release_key)


def write_case(d: Path, facts: Facts, manifest: bytes, sig: bytes | None, image: bytes) -> Path:
    d.mkdir(parents=True)
    (d / "case.json").write_text(json.dumps(asdict(facts)))
    (d / release.MANIFEST).write_bytes(manifest)
    if sig is not None:
        (d / release.SIGNATURE).write_bytes(sig)
    (d / release.IMAGE).write_bytes(image)
    return d


def run_cases(cases: Path) -> dict[str, str]:
    """{case: "ok" or the refusal} of each case under `cases`, on MicroPython."""
    out = unixport.run([str(SCRIPT), str(FIRMWARE), str(cases)])
    return dict(re.findall(r"^CASE (\S+) (\S+)$", out, re.M))


def _signed_case(d: Path, size: int) -> Path:
    """A good release of `size` random bytes, signed with a new key."""
    key = d / "release.key"
    release.keygen(key)
    image = os.urandom(size)
    rel = d / "release"
    rel.mkdir()
    (rel / release.IMAGE).write_bytes(image)
    text = release.manifest(image, ["emulator"], version="9.0.0", mpy=6)
    (rel / release.MANIFEST).write_bytes(text)
    sig = release.sign(key, rel / release.MANIFEST).read_bytes()
    facts = Facts(key=release.public_hex(Path(f"{key}.pub")))
    return write_case(d / "case", facts, text, sig, image)


def verify_figures(size: int = 128 * 1024) -> dict[str, float]:
    """On the MicroPython unix port, for a signed `size`-byte image: the signature's check
    (one 2048-bit pow) and the image's SHA-256 read back in 4 KiB chunks, best of 5, in ms;
    and the heap a verify holds above the loaded module, its inputs and the 4 KiB buffer it
    borrows (the smallest -X heapsize that runs it, less that of the same run unchecked)."""
    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        case = _signed_case(d, size)
        fw = d / "fw"
        for name in ("__init__", "release"):  # compiled, as on the device
            (fw / "app").mkdir(parents=True, exist_ok=True)
            unixport.cross_compile(FIRMWARE / "app" / f"{name}.py",
                                   fw / "app" / f"{name}.mpy", f"app/{name}.py")
        unixport.cross_compile(SCRIPT, fw / "releasecheck.mpy")
        out = unixport.run([str(SCRIPT), str(fw), str(case), "time", "5"])
        m = re.search(r"^TIME (\d+) (\d+)$", out, re.M)
        if not m:
            raise RuntimeError(f"releasecheck.py said: {out!r}")
        sig_ms, hash_ms = int(m[1]) / 1000, int(m[2]) / 1000

        def args(mode: str) -> list[str]:
            argv = ["", str(fw), str(case), mode]
            return ["-c", f"import sys; sys.argv[:] = {argv!r}; sys.path.insert(0, {str(fw)!r})"
                    "; import releasecheck"]

        heap = unixport.min_heap(args("heap"), step=64) - unixport.min_heap(args("base"), step=64)
    return {"release_signature_ms": round(sig_ms, 2),
            "release_hash_128k_ms": round(hash_ms, 2),
            "release_verify_ms": round(sig_ms + hash_ms, 2),
            "release_verify_heap_bytes": heap}
