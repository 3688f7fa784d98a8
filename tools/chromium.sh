# Sourced by ./test.sh: the browser tests drive Debian's Chromium (headless, through
# Playwright's Python client pointed at /usr/bin/chromium; Playwright's own browser downloads
# are never used). Installs it with apt-get when it is missing, as root or with sudo.
if [ ! -x /usr/bin/chromium ]; then
    echo "installing Chromium for the browser tests (once) ..." >&2
    if [ "$(id -u)" = 0 ]; then _sudo=; elif command -v sudo >/dev/null; then _sudo="sudo -n"; else
        echo "error: /usr/bin/chromium is missing and this user cannot apt-get install it" \
             "(run as root, or install the Debian package chromium)" >&2; exit 1
    fi
    { $_sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -q \
        chromium; } >&2 || { echo "error: apt-get install chromium failed" >&2; exit 1; }
    [ -x /usr/bin/chromium ] || { echo "error: no /usr/bin/chromium after install" >&2; exit 1; }
fi
