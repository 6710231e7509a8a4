# Sourced by .ci/run: a throwaway PostgreSQL server on loopback (127.0.0.1, a free port) for the
# sweep's test of workers on several machines (tests/test_sweep.py); exports
# MAKEMORE_TEST_POSTGRES and stops and removes the server when the script exits.
# Debian's postgresql package is installed with apt-get when no server binaries are found.
pg_up() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "installing postgresql (apt-get) for the sweep's PostgreSQL test"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    PG_DIR=$(mktemp -d /tmp/makemore-pg.XXXXXX)
    if [ "$(id -u)" = 0 ]; then PG_AS="runuser -u postgres --"; chown postgres "$PG_DIR"; else PG_AS=""; fi
    PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    $PG_AS "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
    $PG_AS "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR" start >/dev/null
    trap pg_down EXIT
    "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "CREATE USER makemore PASSWORD 'makemore'" -c "CREATE DATABASE makemore OWNER makemore" >/dev/null
    export MAKEMORE_TEST_POSTGRES="postgresql://makemore:makemore@127.0.0.1:$PG_PORT/makemore"
    echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT for the sweep test"
}

pg_down() {
    $PG_AS "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
}
