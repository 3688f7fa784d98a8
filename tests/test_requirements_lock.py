"""requirements.lock against pyproject.toml: the lock was made from pyproject's dependency
lists as they are (its header's hash), every requirement of the project, its extras and its
build is pinned there at a version that satisfies it, with hashes, and .venv holds exactly
what the lock pins (tools/venv.sh installs it with --require-hashes)."""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
_spec = importlib.util.spec_from_file_location("lockhash", ROOT / "tools" / "lockhash.py")
assert _spec is not None and _spec.loader is not None
lockhash = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lockhash)

HEADER = re.compile(r"^# pyproject-sha256: ([0-9a-f]{64})$", re.M)


def pins(lock: str) -> dict[str, tuple[Version, int]]:
    """The lock's pins that apply here (their markers evaluated for this Python and
    platform): name -> (version, how many hashes)."""
    out: dict[str, tuple[Version, int]] = {}
    for entry in re.split(r"\n(?=\S)", lock):
        if entry.startswith("#") or not entry.strip():
            continue
        head, *rest = entry.split("\\\n")
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)\s*(?:;(.*))?", head.strip())
        assert m, f"not a pin: {head!r}"
        if m[3] and not Marker(m[3]).evaluate():
            continue
        out[canonicalize_name(m[1])] = (Version(m[2]), sum(
            r.strip().startswith("--hash=sha256:") for r in rest))
    return out


def problems(pyproject: Path, lock: str) -> list[str]:
    """What is wrong with `lock` for `pyproject` (nothing: [])."""
    found = []
    header = HEADER.search(lock)
    if header is None or header[1] != lockhash.digest(pyproject):
        found.append("the lock was not made from this pyproject.toml's dependencies: run "
                     "tools/lock.sh")
    pinned = pins(lock)
    lists = lockhash.lists(pyproject)
    wanted = [*lists["build"], *lists["dependencies"], *(
        r for extra in lists["extras"].values() for r in extra)]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name not in pinned:
            found.append(f"{req.name}: not in the lock")
        elif not req.specifier.contains(pinned[name][0], prereleases=True):
            found.append(f"{req.name}: the lock has {pinned[name][0]}, pyproject wants {text}")
    found += [f"{name}: no hash" for name, (_, n) in pinned.items() if n == 0]
    return found


def test_the_lock_is_pyprojects():
    assert problems(lockhash.PYPROJECT, LOCK.read_text()) == []


def test_a_lock_that_disagrees_with_pyproject_is_caught(tmp_path):
    lock, text = LOCK.read_text(), lockhash.PYPROJECT.read_text()
    changed = tmp_path / "pyproject.toml"
    for old, new, also in (  # pyproject changed, the lock not made again
            ('"aiohttp>=3.9"', '"aiohttp>=99"', "aiohttp: the lock has 3."),
            ('"jinja2>=3.1",', '"jinja2>=3.1", "nosuchpackage>=1",',
             "nosuchpackage: not in the lock"),
            ('requires = ["setuptools>=68"]', 'requires = ["setuptools>=99"]',
             "setuptools: the lock has")):
        assert old in text
        changed.write_text(text.replace(old, new))
        found = problems(changed, lock)
        assert found[0].startswith("the lock was not made from"), old
        assert any(p.startswith(also) for p in found[1:]), found
    # A pin whose hashes were dropped.
    stripped = re.sub(r"(pyserial==[^\n]*?) \\\n(    --hash=[^\n]*\n)+", r"\1\n", lock)
    assert stripped != lock
    assert problems(lockhash.PYPROJECT, stripped) == ["pyserial: no hash"]


def test_the_venv_holds_what_the_lock_pins():
    for name, (version, _) in pins(LOCK.read_text()).items():
        assert Version(metadata.version(name)) == version, name
