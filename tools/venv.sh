# Sourced by ./brewmeter, ./test.sh and ./flash.sh: make sure .venv exists and matches
# requirements.lock (made from pyproject.toml by tools/lock.sh). Needs only python3 on the
# machine; everything else comes from PyPI, each file checked against the lock's SHA-256.
_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$_top/.venv"
_lock="$_top/requirements.lock"
_stamp="$VENV/.lock.sha256"
_want=$(cat "$_top/pyproject.toml" "$_lock" | sha256sum | cut -d' ' -f1)
_stale() { [ ! -x "$VENV/bin/python" ] || [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; }
if _stale; then
    # One setup at a time: a command started meanwhile (./brewmeter beside ./test.sh) waits
    # for it, then finds .venv ready, instead of clearing it under the other's pip.
    if command -v flock >/dev/null 2>&1; then exec 9>"$_top/.venv-setup.lock"; flock 9; fi
fi
if _stale; then
    echo "setting up $VENV (once) ..." >&2
    # --clear: a package the lock no longer names goes too.
    python3 -m venv --clear "$VENV" || { echo "error: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
    # pip's "Location ... is ignored" warnings come from this machine's index config: noise.
    _pip() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | grep -v '^WARNING: Location' >&2; return "${PIPESTATUS[0]}"; }
    # Every package at the lock's version and hashes (pip, and setuptools for the build, too);
    # then brewmeter itself, built with that setuptools.
    _pip --require-hashes -r "$_lock" || { echo "error: could not install requirements.lock" >&2; exit 1; }
    _pip --no-deps --no-build-isolation -e "$_top" || { echo "error: could not install brewmeter" >&2; exit 1; }
    echo "$_want" > "$_stamp"
fi
exec 9>&-
export PATH="$VENV/bin:$PATH"
