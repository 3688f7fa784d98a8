# Sourced by ./test.sh: the browser tests drive Debian's Chromium (headless, through
# Playwright's Python client pointed at /usr/bin/chromium; Playwright's own browser downloads
# are never used). Installs it with apt-get when it is missing, as root or with sudo.
if [ ! -x /usr/bin/chromium ]; then
    . tools/aptinstall.sh
    apt_install chromium "Chromium for the browser tests"
    [ -x /usr/bin/chromium ] || { echo "error: no /usr/bin/chromium after install" >&2; exit 1; }
fi
