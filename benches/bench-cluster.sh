# Sourced by the benchmark scripts: a throwaway PostgreSQL with pgbench
# data, and configs for pgtenant and PgBouncer in front of it, in a temp
# folder that is removed on exit (KEEP=1 keeps it). Loopback only.
#
# In:  ROOT, SCALE (pgbench scale), PG_PORT, PGTENANT_PORT, PGBOUNCER_PORT,
#      PGTENANT_BIN (optional: another build to measure; else built here)
# Out: W (the folder), AS (run-as-postgres prefix when root), PIDS (to
#      stop on exit), PG_BIN; $W/pgtenant.toml (fitted to PGTENANT_BIN),
#      $W/pgbouncer.ini; fit_config BIN FILE (the config for another build)
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
command -v pgbench >/dev/null || { echo "needs pgbench" >&2; exit 1; }

W=$(mktemp -d /tmp/pgtenant-bench.XXXXXX)
AS=()
if [[ $(id -u) -eq 0 ]]; then
  AS=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$W")
  chown postgres: "$W"
fi
chmod 777 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "${AS[@]}" "$PG_BIN/pg_ctl" -D "$W/pgdata" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
[[ -n ${KEEP:-} ]] && trap - EXIT

"${AS[@]}" "$PG_BIN/initdb" -D "$W/pgdata" -U postgres -A trust --no-sync >/dev/null
cat >>"$W/pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$W'
max_connections = 200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
CONF
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$W/pgdata" -l "$W/pg.log" -w start >/dev/null
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
  -c "CREATE ROLE bench LOGIN" -c "CREATE DATABASE bench OWNER bench"
pgbench -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U bench bench >/dev/null 2>&1

# As written, for every build; $W/pgtenant.toml is it fitted to
# PGTENANT_BIN (fit_config, below).
cat >"$W/pgtenant.base.toml" <<CONF
[proxy]
listen = "127.0.0.1:$PGTENANT_PORT"
auth_type = "trust"
workers = 1
[placements.bench]
url = "postgres://bench@127.0.0.1:$PG_PORT/bench?require_auth=none"
isolation = "database"
pool_size = 20
[tenants.bench]
placement = "bench"
users = { bench = "bench" }
CONF
cat >"$W/pgbouncer.ini" <<CONF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $W/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
logfile = $W/pgbouncer.log
CONF
echo '"bench" ""' >"$W/userlist.txt"
chmod 644 "$W"/*.toml "$W"/*.ini "$W/userlist.txt"
if [[ -z ${PGTENANT_BIN:-} ]]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  PGTENANT_BIN=$ROOT/target/release/pgtenant
fi
# Writes to $2 the proxy config fitted to build $1. Builds before
# require_auth refuse the parameter (they take whatever the server asks):
# it is dropped for them, as pgtenant-under-bench.sh does.
fit_config() {
  cp "$W/pgtenant.base.toml" "$2"
  if ! "$1" -c "$2" check >/dev/null 2>&1; then
    sed -i 's/?require_auth=[^"]*"/"/' "$2"
  fi
}
fit_config "$PGTENANT_BIN" "$W/pgtenant.toml"

# Waits until a proxy on port $1 answers a query (about 20 s at most).
wait_port() {
  local i
  for i in $(seq 1 100); do
    psql -X -Atq -h 127.0.0.1 -p "$1" -U bench -d bench -c 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "nothing answers on port $1" >&2
  return 1
}
