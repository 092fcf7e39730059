#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the tests and benchmarks: `make test` (and so .ci/run)
# and the `pg_dsn` fixture (tests/pg/fixtures.py) both start it through this script.
#
#   tests/pg/cluster.sh start       a new directory under /tmp (owned by postgres: the server
#                                   must reach it), initdb, start; prints two lines: the
#                                   directory, then the DSN
#   tests/pg/cluster.sh stop DIR    stop the server, remove DIR
#
# PostgreSQL refuses to run as root, and CI runs as root: when we are root the server runs as
# the `postgres` user through runuser. It listens on 127.0.0.1 on a free port (password auth,
# scram) and on a unix socket inside DIR only. Exits non-zero with one line if it cannot start.
set -euo pipefail
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?usage: cluster.sh start | stop DIR}

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
    [ -x "$BIN/initdb" ] || { echo "cluster.sh: no PostgreSQL binaries in $BIN" >&2; exit 1; }
    dir=$(mktemp -d /tmp/rinna-pg.XXXXXX)  # /tmp: world-traversable, unlike pytest's tmp
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    chmod 700 "$dir"
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    printf '%s\n' "$password" > "$dir/pwfile"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/pwfile"
    as_owner "$BIN/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" -E UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
        || { echo "cluster.sh: initdb failed (see $dir/initdb.log)" >&2; exit 1; }
    rm -f "$dir/pwfile"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Quick over durable: a test cluster. fsync off, small shared memory, many connections.
    as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start -o \
        "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB" \
        >/dev/null 2>&1 || { echo "cluster.sh: the server did not start (see $dir/server.log)" >&2; exit 1; }
    echo "$dir"
    echo "postgresql://postgres:$password@127.0.0.1:$port/postgres"
    ;;
stop)
    dir=${2:?usage: cluster.sh stop DIR}
    case "$dir" in /tmp/rinna-pg.*) ;; *) echo "cluster.sh: not a test cluster: $dir" >&2; exit 2;; esac
    if [ -d "$dir/data" ]; then as_owner "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true; fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: cluster.sh start | stop DIR" >&2; exit 2
    ;;
esac
