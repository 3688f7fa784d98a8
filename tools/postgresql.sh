# Sourced by .ci/run: the cloud's tests run on SQLite and on a real PostgreSQL, started from
# Debian's packages by the tests themselves (brewmeter.cloud.pgserver: initdb in a temporary
# folder, pg_ctl on a free port). Installs the package with apt-get when initdb is missing,
# as root or with sudo. (Without it, ./test.sh skips those tests; under CI=true they fail.)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
    echo "installing PostgreSQL for the cloud's tests (once) ..." >&2
    if [ "$(id -u)" = 0 ]; then _sudo=; elif command -v sudo >/dev/null; then _sudo="sudo -n"; else
        echo "error: PostgreSQL is missing and this user cannot apt-get install it" \
             "(run as root, or install the Debian package postgresql)" >&2; exit 1
    fi
    { $_sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -q \
        postgresql; } >&2 || { echo "error: apt-get install postgresql failed" >&2; exit 1; }
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || {
        echo "error: no initdb under /usr/lib/postgresql after install" >&2; exit 1; }
fi
