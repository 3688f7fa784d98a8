"""What requirements.lock was made from: the SHA-256 of pyproject.toml's dependency lists (the
project's dependencies, every extra, the build's requirements), printed for tools/lock.sh to
write into the lock's header and for tests/test_requirements_lock.py to compare.
`--build-requires` prints the build's requirements instead, one a line. Needs only the
standard library."""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def lists(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    doc = tomllib.loads(pyproject.read_text())
    return {"build": doc["build-system"]["requires"],
            "dependencies": doc["project"]["dependencies"],
            "extras": doc["project"].get("optional-dependencies", {})}


def digest(pyproject: Path = PYPROJECT) -> str:
    return hashlib.sha256(json.dumps(lists(pyproject), sort_keys=True).encode()).hexdigest()


if __name__ == "__main__":
    if sys.argv[1:] == ["--build-requires"]:
        print("\n".join(lists()["build"]))
    else:
        print(digest())
