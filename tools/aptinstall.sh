# Sourced by tools/chromium.sh and tools/postgresql.sh: apt_install PACKAGE WHAT installs a
# Debian package with apt-get, as root or with sudo, or stops the sourcing script with why.
apt_install() {
    echo "installing $2 (once) ..." >&2
    if [ "$(id -u)" = 0 ]; then _sudo=; elif command -v sudo >/dev/null; then _sudo="sudo -n"; else
        echo "error: $1 is missing and this user cannot apt-get install it" \
             "(run as root, or install the Debian package $1)" >&2; exit 1
    fi
    { $_sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -q \
        "$1"; } >&2 || { echo "error: apt-get install $1 failed" >&2; exit 1; }
}
