#!/usr/bin/env bash
# Makes requirements.lock from pyproject.toml: every package the project, its extras and its
# build need (and pip), pinned with the SHA-256 of each of its files on PyPI, for every
# platform, Python 3.11 and later. tools/venv.sh installs .venv from it with
# --require-hashes. Run it after any change to pyproject.toml's dependencies, extras or build
# requirements (tests/test_requirements_lock.py fails until then); it keeps the versions the
# lock has where they still fit. To move to newer releases, all or one:
#
#     tools/lock.sh
#     tools/lock.sh --upgrade
#     tools/lock.sh --upgrade-package mpremote
#
# The lock's header records the hash of those lists (tools/lockhash.py) it was made from.
# Needs only python3 and PyPI: the locking tool is uv at the version below, in a venv of its
# own (.venv-lock).
set -eu
UV_VERSION=0.13.9
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
tool=.venv-lock
if [ "$("$tool/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    rm -rf "$tool"
    python3 -m venv "$tool"
    "$tool/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
extra=$(mktemp)
trap 'rm -f "$extra"' EXIT
python3 tools/lockhash.py --build-requires > "$extra"  # setuptools, for --no-build-isolation
echo pip >> "$extra"
out=requirements.lock.new
[ -f requirements.lock ] && cp requirements.lock "$out"  # its pins are kept unless --upgrade
"$tool/bin/uv" pip compile --quiet --universal --python-version 3.11 --all-extras \
    --generate-hashes --custom-compile-command "tools/lock.sh" --no-annotate \
    "$@" -o "$out" pyproject.toml "$extra"
{
    echo "# pyproject-sha256: $(python3 tools/lockhash.py)"
    grep -v '^# pyproject-sha256: ' "$out"
} > requirements.lock
rm "$out"
echo "requirements.lock: $(grep -c '==' requirements.lock) packages" >&2
