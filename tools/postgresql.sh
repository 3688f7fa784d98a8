# Sourced by .ci/run: the cloud's tests run on SQLite and on a real PostgreSQL, started from
# Debian's packages by the tests themselves (brewmeter.cloud.pgserver: initdb in a temporary
# folder, pg_ctl on a free port). Installs the package with apt-get when initdb is missing,
# as root or with sudo. (Without it, ./test.sh skips those tests; under CI=true they fail.)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
    . tools/aptinstall.sh
    apt_install postgresql "PostgreSQL for the cloud's tests"
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || {
        echo "error: no initdb under /usr/lib/postgresql after install" >&2; exit 1; }
fi
