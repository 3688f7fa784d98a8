# Sourced by ./brewmeter, ./test.sh and ./flash.sh: make sure .venv exists and matches pyproject.toml.
# Needs only python3 on the machine; everything else comes from PyPI.
_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$_top/.venv"
_stamp="$VENV/.pyproject.sha256"
_want=$(sha256sum "$_top/pyproject.toml" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
    echo "setting up $VENV (once) ..." >&2
    python3 -m venv "$VENV" || { echo "error: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
    # pip's "Location ... is ignored" warnings come from this machine's index config: noise.
    _pip() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | grep -v '^WARNING: Location' >&2; return "${PIPESTATUS[0]}"; }
    _pip --upgrade pip || exit 1
    _pip -e "$_top[dev]" || { echo "error: could not install brewmeter's packages" >&2; exit 1; }
    echo "$_want" > "$_stamp"
fi
export PATH="$VENV/bin:$PATH"
