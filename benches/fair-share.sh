#!/usr/bin/env bash
# Fair sharing of one pool (issue 18 point 5): the latency of a quiet
# tenant's short transactions on a shared placement, alone and while
# another tenant floods the same pool with FLOOD_CLIENTS clients in
# pg_sleep(0.2) transactions. Percentiles come from pgbench's
# per-transaction log (--log), so they include the wait for a server
# connection.
#
#   benches/fair-share.sh                       # release build, 10 s per run
#   DURATION=20 POOL=10 FLOOD_CLIENTS=100 benches/fair-share.sh
#
# Runs, each on a fresh proxy:
#   alone        the quiet tenant only
#   flood        the flood at its default share (half of POOL)
#   flood-rr     the flood allowed the whole pool (max_server_connections =
#                POOL): only the round robin keeps the quiet tenant going
# BASELINE_BIN=<another pgtenant build> adds "flood-fifo": the flood on that
# build, whose pool has one FIFO and no per-tenant cap (for example a
# release build of a commit before fair sharing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10}
POOL=${POOL:-10}
FLOOD_CLIENTS=${FLOOD_CLIENTS:-100}
SCALE=${SCALE:-1}
# Above the ephemeral range (32768-60999): see compare.sh.
PG_PORT=${PG_PORT:-61652}
PGTENANT_PORT=${PGTENANT_PORT:-61653}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61654} # bench-cluster.sh writes its config; unused here
if [[ -z ${PGTENANT_BIN:-} ]]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  PGTENANT_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pgtenant
fi
# shellcheck source=benches/bench-cluster.sh
source "$ROOT/benches/bench-cluster.sh"

cat >"$W/quiet.sql" <<'SQL'
\set aid random(1, 100000)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
END;
SQL
cat >"$W/flood.sql" <<'SQL'
BEGIN;
SELECT pg_sleep(0.2);
END;
SQL

# Writes the config of a run: tenants flood and quiet on one placement;
# $1 goes into [tenants.flood].
config() {
  cat >"$W/fair.toml" <<CONF
[proxy]
listen = "127.0.0.1:$PGTENANT_PORT"
auth_type = "trust"
query_wait_timeout = "120s"
[placements.bench]
url = "postgres://bench@127.0.0.1:$PG_PORT/bench?require_auth=none"
isolation = "database"
allow_shared_database = true
pool_size = $POOL
[tenants.flood]
placement = "bench"
users = { bench = "bench" }
$1
[tenants.quiet]
placement = "bench"
users = { bench = "bench" }
CONF
}

# Starts the proxy ($1: binary) on the current config; sets PROXY.
start_proxy() {
  PGTENANT_LOG=warn "$1" -c "$W/fair.toml" >>"$W/pgtenant.out" 2>&1 &
  PROXY=$!
  PIDS+=("$PROXY")
  local i
  for i in $(seq 1 100); do
    psql -X -Atq -h 127.0.0.1 -p "$PGTENANT_PORT" -U bench.quiet -d bench -c 'select 1' \
      >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the proxy does not answer; see $W/pgtenant.out" >&2
  exit 1
}

stop_proxy() {
  kill "$PROXY" 2>/dev/null || true
  wait "$PROXY" 2>/dev/null || true
}

# p50 p95 p99 max (ms) and the count of the transactions in pgbench log
# files $@ (the third field is the latency in microseconds).
percentiles() {
  cat "$@" | awk '{print $3}' | sort -n | awk '
    function at(q,  i) { i = int(NR * q + 0.5); return v[i < 1 ? 1 : i] / 1000 }
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "no transactions"; exit }
      printf "%8.2f %8.2f %8.2f %8.2f %9d\n", at(0.50), at(0.95), at(0.99), v[NR] / 1000, NR
    }'
}

pgb() {
  pgbench -n -h 127.0.0.1 -p "$PGTENANT_PORT" -d bench "$@"
}

# One run: $1 name, $2 binary, $3 flood's extra config ("-": no flood).
run() {
  local name=$1 bin=$2 extra=$3 flood=
  config "${extra/#-/}"
  start_proxy "$bin"
  if [[ $extra != - ]]; then
    pgb -U bench.flood -c "$FLOOD_CLIENTS" -j 2 -T $((DURATION + 6)) -f "$W/flood.sql" \
      >"$W/$name.flood.out" 2>&1 &
    flood=$!
    sleep 4 # logins done and the pool full before the quiet tenant starts
  fi
  pgb -U bench.quiet -c 1 -j 1 -T "$DURATION" -f "$W/quiet.sql" \
    --log --log-prefix="$W/log-$name" >"$W/$name.quiet.out" 2>&1
  local held=
  if [[ -n $flood ]]; then
    held=$(psql -X -Atq -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c \
      "select count(*) from pg_stat_activity where query like '%pg_sleep%' and state <> 'idle' and pid <> pg_backend_pid()")
    wait "$flood" || { cat "$W/$name.flood.out" >&2; exit 1; }
    held="$held ($(awk '/number of transactions actually processed/ {print $NF}' "$W/$name.flood.out") txns)"
  fi
  stop_proxy
  printf '%-11s %s  %s\n' "$name" "$(percentiles "$W/log-$name".*)" "${held:--}"
}

echo "pool_size $POOL, flood $FLOOD_CLIENTS clients in pg_sleep(0.2) transactions, ${DURATION}s per run"
echo "quiet tenant: BEGIN; SELECT 1 row by key; END (3 round trips), latency in ms"
printf '%-11s %8s %8s %8s %8s %9s  %s\n' run p50 p95 p99 max txns "flood busy at end"
run alone "$PGTENANT_BIN" -
run flood "$PGTENANT_BIN" ""
run flood-rr "$PGTENANT_BIN" "max_server_connections = $POOL"
if [[ -n ${BASELINE_BIN:-} ]]; then
  run flood-fifo "$BASELINE_BIN" ""
fi
