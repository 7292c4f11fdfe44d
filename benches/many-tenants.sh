#!/usr/bin/env bash
# Many tenants on one shared placement (issue 18, point 8), in one run:
#  (a) select-only throughput of CLIENTS clients of ONE tenant against the
#      same number of clients from CLIENTS different tenants (one each),
#      through the same proxy and the same pool; their ratio. Optionally a
#      SMALL-client arm of one tenant for scale.
#  (b) with TENANTS tenants configured: the proxy's startup time (exec to
#      the first answered query), its RSS after start and after the
#      many-tenant arm, and `pgtenant check` time on that config; for
#      contrast the startup of a one-tenant config.
#
#   benches/many-tenants.sh
#   DURATION=30s PROTOCOL=extended benches/many-tenants.sh
#   ISOLATION=rls benches/many-tenants.sh        # once rls lands (hook below)
#
# The load comes from benches/tenants_load.rs (cargo bench target), one
# login per client as its own tenant: user app.tN. Every tenant has the
# plaintext password below, which the proxy derives a SCRAM verifier from
# at load (the worst case for startup: verifiers in the config skip it).
# Logins happen before the measured window, so SCRAM (AUTH, the default)
# costs connect time only, never throughput; AUTH=trust skips it.
#
# In: TENANTS (configured, 10000), CLIENTS (1000), SMALL (16; 0 skips),
#     DURATION (20s), WARMUP (3s), PROTOCOL (simple|extended|prepared),
#     ISOLATION (database|rls), STORE (rls: sequences|setting, the
#     placement's context_store; setting runs sql/pgtenant-setting.sql),
#     AUTH (scram-sha-256|trust), POOL_SIZE (20),
#     WORKERS (proxy threads, 1), LOAD_THREADS (generator threads, 1),
#     SCALE (pgbench scale, 10), ROUNDS (runs of each 1,000-client arm,
#     alternated; 2), PGTENANT_BIN, LOAD_BIN (else built here,
#     release), KEEP=1 keeps the temp folder.
# Out: the lines of each arm (RESULT ...), a summary table, and one
#     `SUMMARY key=value ...` line.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TENANTS=${TENANTS:-10000}
CLIENTS=${CLIENTS:-1000}
SMALL=${SMALL:-16}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
PROTOCOL=${PROTOCOL:-simple}
ISOLATION=${ISOLATION:-database}
STORE=${STORE:-sequences}
AUTH=${AUTH:-scram-sha-256}
POOL_SIZE=${POOL_SIZE:-20}
WORKERS=${WORKERS:-1}
LOAD_THREADS=${LOAD_THREADS:-1}
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-2}
PASSWORD=bench-tenant-secret
# Above the ephemeral range (32768-60999), apart from compare.sh's ports.
PG_PORT=${PG_PORT:-61672}
PGTENANT_PORT=${PGTENANT_PORT:-61673}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61674} # unused; bench-cluster.sh names it
(( CLIENTS <= TENANTS )) || { echo "CLIENTS ($CLIENTS) must not exceed TENANTS ($TENANTS)" >&2; exit 1; }
case $ISOLATION in database | rls) ;; *) echo "ISOLATION is database or rls" >&2; exit 1 ;; esac

# shellcheck source=benches/load-bins.sh
source "$ROOT/benches/load-bins.sh"
# shellcheck source=benches/bench-cluster.sh
source "$ROOT/benches/bench-cluster.sh"

# ---- Hook: what a shared placement of ISOLATION needs in its database ----
# database: nothing (allow_shared_database = true in the config below).
# rls: sql/pgtenant.sql installed and a policy that every statement
#      evaluates, so that the run pays for the tenant context. The rows stay
#      visible to every tenant, so that both isolations run the same work.
#      pgtenant refuses a shared role that owns the tables it reads, so they
#      move to a separate owner. Untested until isolation = "rls" lands:
#      adjust to the role checks it ships with.
prepare_placement() {
  [[ $ISOLATION == rls ]] || return 0
  [[ -f $ROOT/sql/pgtenant.sql ]] || { echo "rls needs sql/pgtenant.sql" >&2; exit 1; }
  local su=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench)
  # The tables and schema pgtenant belong to bench_owner; the placement
  # logs in as bench, which may read the tables through the policies only
  # (what the rls pool-start check asks).
  "${su[@]}" <<'SQL'
CREATE ROLE bench_owner NOLOGIN;
ALTER DATABASE bench OWNER TO bench_owner;
ALTER TABLE pgbench_accounts OWNER TO bench_owner;
ALTER TABLE pgbench_branches OWNER TO bench_owner;
ALTER TABLE pgbench_tellers OWNER TO bench_owner;
ALTER TABLE pgbench_history OWNER TO bench_owner;
GRANT CONNECT ON DATABASE bench TO bench;
SQL
  "${su[@]}" -c "SET ROLE bench_owner" -f "$ROOT/sql/pgtenant.sql" >/dev/null
  if [[ $STORE == setting ]]; then
    "${su[@]}" -f "$ROOT/sql/pgtenant-setting.sql" >/dev/null
  fi
  # Every tenant reads the same pgbench rows: the policy only needs a
  # context (pgbench -S also counts pgbench_branches at start).
  local t
  for t in accounts branches; do
    "${su[@]}" <<SQL
SET ROLE bench_owner;
ALTER TABLE pgbench_$t ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgbench_$t FORCE ROW LEVEL SECURITY;
CREATE POLICY every_tenant ON pgbench_$t USING (pgtenant.current_tenant() IS NOT NULL);
GRANT SELECT ON pgbench_$t TO bench;
SQL
  done
}
prepare_placement

# A config of $2 tenants t0..t(N-1), all on the one shared placement.
write_config() {
  local file=$1 n=$2 shared=""
  [[ $ISOLATION == database ]] && shared="allow_shared_database = true"
  [[ $ISOLATION == rls ]] && shared="context_store = \"$STORE\""
  cat >"$file" <<CONF
[proxy]
listen = "127.0.0.1:$PGTENANT_PORT"
auth_type = "$AUTH"
workers = $WORKERS
default_placement = "shared"
# Room for one arm's clients while the last arm's are still being closed.
default_tenant_max_client_connections = $((2 * CLIENTS > 1000 ? 2 * CLIENTS : 1000))

[placements.shared]
url = "postgres://bench@127.0.0.1:$PG_PORT/bench?require_auth=none"
isolation = "$ISOLATION"
pool_size = $POOL_SIZE
$shared

CONF
  awk -v n="$n" -v pw="$PASSWORD" 'BEGIN {
    for (i = 0; i < n; i++) printf "[tenants.t%d]\nusers = { app = \"%s\" }\n", i, pw
  }' >>"$file"
  chmod 644 "$file"
}
write_config "$W/one.toml" 1
write_config "$W/many.toml" "$TENANTS"
if [[ $ISOLATION == rls ]]; then
  # Both configs share the secret file beside them, so one key serves both.
  "$PGTENANT_BIN" context-key -c "$W/one.toml" shared |
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench \
      -c "SET ROLE bench_owner" -f - >/dev/null
fi

now_ms() { date +%s%3N; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / hz)}' "/proc/$1/stat"; }
PROXY=
# Starts the proxy on config $1; sets PROXY, STARTUP_MS (exec to the first
# query answered through it, as tenant t0; includes the pool's first server
# connection) and STARTUP_CPU_MS (the CPU time it took until then: on a
# shared machine, the steadier figure).
start_proxy() {
  local t0 i
  t0=$(now_ms)
  PGTENANT_LOG=warn "$PGTENANT_BIN" -c "$1" >>"$W/pgtenant.out" 2>&1 &
  PROXY=$!
  PIDS+=("$PROXY")
  for i in $(seq 1 12000); do
    if PGPASSWORD=$PASSWORD psql -X -Atq -h 127.0.0.1 -p "$PGTENANT_PORT" -U app.t0 -d bench \
      -c 'select 1' >/dev/null 2>&1; then
      STARTUP_MS=$(($(now_ms) - t0))
      STARTUP_CPU_MS=$(cpu_ms "$PROXY")
      return 0
    fi
    kill -0 "$PROXY" 2>/dev/null || { cat "$W/pgtenant.out" >&2; exit 1; }
    sleep 0.01
  done
  echo "the proxy did not answer within 120 s" >&2
  exit 1
}
stop_proxy() {
  kill -TERM "$PROXY"
  wait "$PROXY" 2>/dev/null || true
}

echo "== startup: 1 tenant configured"
start_proxy "$W/one.toml"
STARTUP_ONE_MS=$STARTUP_MS
STARTUP_ONE_CPU_MS=$STARTUP_CPU_MS
RSS_ONE_KB=$(rss_kb "$PROXY")
stop_proxy

echo "== pgtenant check: $TENANTS tenants"
t0=$(now_ms)
"$PGTENANT_BIN" check -c "$W/many.toml" >/dev/null 2>&1
CHECK_MS=$(($(now_ms) - t0))

echo "== startup: $TENANTS tenants configured"
start_proxy "$W/many.toml"
STARTUP_MANY_MS=$STARTUP_MS
STARTUP_MANY_CPU_MS=$STARTUP_CPU_MS
RSS_START_KB=$(rss_kb "$PROXY")

# One arm: label, tenants, clients per tenant. Appends its RESULT line.
RESULTS=()
arm() {
  local out
  echo "== $1: $2 tenant(s) x $3 client(s), $PROTOCOL, $DURATION"
  out=$("$LOAD_BIN" --addr "127.0.0.1:$PGTENANT_PORT" --tenant-pattern 't{}' \
    --user app --password "$PASSWORD" --dbname bench --tenants "$2" --clients-per-tenant "$3" \
    --duration "$DURATION" --warmup "$WARMUP" --protocol "$PROTOCOL" --scale "$SCALE" \
    --threads "$LOAD_THREADS" --proxy-pid "$PROXY" --label "$1")
  echo "$out"
  RESULTS+=("$(grep '^RESULT ' <<<"$out")")
}
field() { grep -o " $2=[^ ]*" <<<"$1" | cut -d= -f2; }

# Warms PostgreSQL's cache and the pool before anything is measured.
"$LOAD_BIN" --addr "127.0.0.1:$PGTENANT_PORT" --password "$PASSWORD" --tenants 16 \
  --duration 5s --warmup 0s --protocol "$PROTOCOL" --scale "$SCALE" >/dev/null
(( SMALL > 0 )) && arm "one-tenant-$SMALL" 1 "$SMALL"
# The two arms alternate (A B B A ...), so that a drift in the machine's
# load (it is shared) weighs on both alike; each arm's TPS is its mean.
ONE_TPS=()
MANY_TPS=()
ONE_CPU=()
MANY_CPU=()
one_arm() {
  arm "one-tenant-$CLIENTS" 1 "$CLIENTS"
  ONE_TPS+=("$(field "${RESULTS[-1]}" tps)")
  ONE_CPU+=("$(field "${RESULTS[-1]}" proxy_cpu_us_per_txn)")
  RSS_AFTER_ONE_KB=$(rss_kb "$PROXY")
}
many_arm() {
  arm "many-tenants-$CLIENTS" "$CLIENTS" 1
  MANY_TPS+=("$(field "${RESULTS[-1]}" tps)")
  MANY_CPU+=("$(field "${RESULTS[-1]}" proxy_cpu_us_per_txn)")
  RSS_AFTER_KB=$(rss_kb "$PROXY")
}
for r in $(seq 1 "$ROUNDS"); do
  if (( r % 2 == 1 )); then one_arm; many_arm; else many_arm; one_arm; fi
done
HWM_KB=$(hwm_kb "$PROXY")
stop_proxy

mean() { printf '%s\n' "$@" | awk '{s += $1} END {printf "%.1f", s / NR}'; }
TPS_ONE=$(mean "${ONE_TPS[@]}")
TPS_MANY=$(mean "${MANY_TPS[@]}")
RATIO=$(awk -v a="$TPS_MANY" -v b="$TPS_ONE" 'BEGIN {printf "%.3f", a / b}')
CPU_ONE=$(mean "${ONE_CPU[@]}")
CPU_MANY=$(mean "${MANY_CPU[@]}")
CPU_RATIO=$(awk -v a="$CPU_MANY" -v b="$CPU_ONE" 'BEGIN {printf "%.3f", a / b}')
echo
echo "== summary ($ISOLATION placement (context store $STORE), pool_size $POOL_SIZE, $WORKERS proxy worker(s), $(nproc) cores, auth $AUTH)"
printf '%-22s %7s %7s %8s %8s %8s %8s %13s %11s %10s\n' run tenants clients TPS "p50 ms" "p95 ms" \
  "p99 ms" "proxy us/txn" "proxy CPU%" "load CPU%"
for r in "${RESULTS[@]}"; do
  printf '%-22s %7s %7s %8.0f %8s %8s %8s %13s %11s %10s\n' "$(field "$r" label)" \
    "$(field "$r" tenants)" "$(field "$r" clients)" "$(field "$r" tps)" "$(field "$r" p50_ms)" \
    "$(field "$r" p95_ms)" "$(field "$r" p99_ms)" "$(field "$r" proxy_cpu_us_per_txn)" \
    "$(field "$r" proxy_cpu_pct)" "$(field "$r" load_cpu_pct)"
done
echo "throughput, $CLIENTS tenants x 1 client / 1 tenant x $CLIENTS clients (means of $ROUNDS runs each): $TPS_MANY / $TPS_ONE = $RATIO"
echo "proxy CPU per transaction, same arms: $CPU_MANY / $CPU_ONE us = $CPU_RATIO"
echo "startup (exec to first query answered): 1 tenant ${STARTUP_ONE_MS} ms (CPU ${STARTUP_ONE_CPU_MS} ms)," \
  "$TENANTS tenants ${STARTUP_MANY_MS} ms (CPU ${STARTUP_MANY_CPU_MS} ms)"
echo "RSS: 1 tenant after start $((RSS_ONE_KB / 1024)) MB; $TENANTS tenants after start $((RSS_START_KB / 1024)) MB, after a 1-tenant run $((RSS_AFTER_ONE_KB / 1024)) MB, after a $CLIENTS-tenant run $((RSS_AFTER_KB / 1024)) MB (peak $((HWM_KB / 1024)) MB)"
echo "pgtenant check, $TENANTS tenants: ${CHECK_MS} ms"
echo "SUMMARY isolation=$ISOLATION store=$STORE protocol=$PROTOCOL tenants_configured=$TENANTS clients=$CLIENTS" \
  "rounds=$ROUNDS tps_one=$TPS_ONE tps_many=$TPS_MANY ratio=$RATIO" \
  "cpu_us_one=$CPU_ONE cpu_us_many=$CPU_MANY cpu_ratio=$CPU_RATIO" \
  "startup_one_ms=$STARTUP_ONE_MS startup_one_cpu_ms=$STARTUP_ONE_CPU_MS" \
  "startup_many_ms=$STARTUP_MANY_MS startup_many_cpu_ms=$STARTUP_MANY_CPU_MS rss_one_kb=$RSS_ONE_KB" \
  "rss_start_kb=$RSS_START_KB rss_after_one_kb=$RSS_AFTER_ONE_KB rss_after_kb=$RSS_AFTER_KB hwm_kb=$HWM_KB check_ms=$CHECK_MS"
