#!/usr/bin/env bash
# What the shared placement costs: pgbench select-only through one
# pgtenant, alternating between a tenant with its own database
# (isolation = "database") and a tenant on a shared database with forced
# row-level security (isolation = "rls": a tenant_id column, the policy
# tenant_id = pgtenant.current_tenant(), and the context call that opens
# every lease). Same data, same pool size, same proxy process; runs
# interleaved so drift on a shared machine hits both alike. Reports TPS per
# run, the medians and the median of the per-repetition ratios rls/database,
# and the same for the machine's busy CPU per transaction (database/rls, so
# that both ratios read "rls as a fraction of database"; steal excluded,
# which TPS on a shared VM is not).
#
#   REPS=5 DURATION=10 CLIENTS=16 MODES="simple extended" benches/rls-vs-database.sh
#
# POLICY sets the policies' expression (default the README's
# "tenant_id = pgtenant.current_tenant()"), to compare forms. STORE=setting
# runs sql/pgtenant-setting.sql (as the cluster's superuser) and sets the
# placement's context_store = "setting" (default: sequences).
#
# DIRECT=1 (with STORE=setting) adds the same pair straight at
# PostgreSQL, no proxy: database bench as its owner against the shared
# database as a role whose tenant is a role default of the setting
# store's setting (fixed, so no proxy is needed to set it, and no proxy
# will serve it: pgtenant refuses a placement role that starts with a
# tenant). Its ratio is what PostgreSQL itself makes of the policy; the
# proxied ratio is the shared placement's.
#
# Needs the PostgreSQL server binaries and pgbench; builds the release
# binary unless PGTENANT_BIN names one.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-16}
MODES=${MODES:-"simple extended"}
POLICY=${POLICY:-"tenant_id = pgtenant.current_tenant()"}
STORE=${STORE:-sequences}
SCALE=${SCALE:-10}
DIRECT=${DIRECT:-0}
if [[ $DIRECT == 1 && $STORE != setting ]]; then
  echo "DIRECT=1 needs STORE=setting (the sequences store's context is only set through enter())" >&2
  exit 2
fi
# Above the ephemeral range (32768-60999), as the other scripts: a port
# in it may be some outgoing connection's local port (it was, on a run
# after a churn benchmark: PostgreSQL could not bind).
PG_PORT=${PG_PORT:-61692}
PGTENANT_PORT=${PGTENANT_PORT:-61693}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61694}
# shellcheck source=benches/bench-cluster.sh
source "$ROOT/benches/bench-cluster.sh"

sql() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" "$@"; }

# The shared database: tables owned by bench_owner, the placement logs in
# as bench_shared, which may read pgbench_accounts through the policy only.
sql -U postgres -d postgres \
  -c "CREATE ROLE bench_owner LOGIN" -c "CREATE ROLE bench_shared LOGIN" \
  -c "CREATE DATABASE bench_shared" \
  -c "REVOKE ALL ON DATABASE bench_shared FROM PUBLIC" \
  -c "GRANT CONNECT ON DATABASE bench_shared TO bench_shared" \
  -c "GRANT CONNECT, CREATE ON DATABASE bench_shared TO bench_owner"
sql -U postgres -d bench_shared -c "GRANT CREATE ON SCHEMA public TO bench_owner"
sql -U bench_owner -d bench_shared -f "$ROOT/sql/pgtenant.sql" >/dev/null
if [[ $STORE == setting ]]; then
  sql -U postgres -d bench_shared -f "$ROOT/sql/pgtenant-setting.sql" >/dev/null
fi
pgbench -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U bench_owner bench_shared >/dev/null 2>&1
# EXTRA_SQL (optional) runs as the owner first, e.g. to define a function
# POLICY calls.
[[ -n ${EXTRA_SQL:-} ]] && sql -U bench_owner -d bench_shared -c "$EXTRA_SQL"
# Every pgbench table gets a tenant and a forced policy (pgbench -S also
# counts pgbench_branches at start).
for t in accounts branches tellers history; do
  sql -U bench_owner -d bench_shared <<SQL
ALTER TABLE pgbench_$t ADD COLUMN tenant_id text NOT NULL DEFAULT 't1';
ALTER TABLE pgbench_$t ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgbench_$t FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON pgbench_$t
    USING ($POLICY)
    WITH CHECK ($POLICY);
GRANT SELECT ON pgbench_$t TO bench_shared;
SQL
done

cat >"$W/rls.toml" <<CONF
[proxy]
listen = "127.0.0.1:$PGTENANT_PORT"
auth_type = "trust"
workers = ${PGTENANT_WORKERS:-1}
tenant_from = ["database"]
secret_file = "$W/pgtenant.secret"

[placements.dedicated]
url = "postgres://bench@127.0.0.1:$PG_PORT/bench?require_auth=none"
isolation = "database"
pool_size = 20

[placements.shared]
url = "postgres://bench_shared@127.0.0.1:$PG_PORT/bench_shared?require_auth=none"
isolation = "rls"
pool_size = 20
context_store = "$STORE"

[tenants.bench]
placement = "dedicated"
users = { bench = "bench" }

[tenants.t1]
placement = "shared"
users = { bench = "bench" }
CONF
if [[ $DIRECT == 1 ]]; then
  sql -U postgres -d postgres -c "CREATE ROLE bench_direct LOGIN" \
    -c "GRANT CONNECT ON DATABASE bench_shared TO bench_direct" \
    -c "ALTER ROLE bench_direct IN DATABASE bench_shared SET backtrace_functions = 't1'"
  sql -U bench_owner -d bench_shared -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO bench_direct"
fi
"$PGTENANT_BIN" context-key -c "$W/rls.toml" shared | sql -U bench_owner -d bench_shared >/dev/null
PGTENANT_LOG=warn "$PGTENANT_BIN" -c "$W/rls.toml" &
PIDS+=($!)
wait_port "$PGTENANT_PORT"
psql -X -Atq -h 127.0.0.1 -p "$PGTENANT_PORT" -U bench -d t1 \
  -c "select count(*) from pgbench_accounts" | grep -qx "$((SCALE * 100000))" ||
  { echo "the rls tenant does not see its rows" >&2; exit 1; }

# Busy jiffies of the whole machine (user, nice, system, irq, softirq; not
# idle, iowait or steal): what a run cost every process on it, pgbench,
# pgtenant and PostgreSQL, without the time the host took away.
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
HZ=$(getconf CLK_TCK)

# "TPS CPU-µs-per-transaction" of one run: through pgtenant, or with a
# port and user, straight at PostgreSQL.
tps() { # database mode [port user]
  local b0 b1 out
  b0=$(busy)
  out=$(pgbench -n -S -M "$2" -c "$CLIENTS" -j 2 -T "$DURATION" -h 127.0.0.1 -p "${3:-$PGTENANT_PORT}" \
    -U "${4:-bench}" "$1" 2>/dev/null | awk '/^tps/ {printf "%.0f", $3}')
  b1=$(busy)
  awk -v t="$out" -v j=$((b1 - b0)) -v hz="$HZ" -v d="$DURATION" \
    'BEGIN {printf "%s %.1f", t, j / hz * 1e6 / (t * d)}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "policy: $POLICY, context store: $STORE"
echo "select-only, $CLIENTS clients, ${DURATION}s x $REPS, scale $SCALE, one pgtenant (workers=${PGTENANT_WORKERS:-1})"
# "ratio CPU-ratio" of a database run and an rls run, each "TPS CPU".
ratio() {
  awk -v a="$1" -v ca="$2" -v b="$3" -v cb="$4" 'BEGIN {printf "%.3f %.3f", b / a, ca / cb}'
}
for mode in $MODES; do
  db=() rls=() ratios=() cpu_ratios=() direct=() direct_cpu=()
  for rep in $(seq 1 "$REPS"); do
    read -r a ca <<<"$(tps bench "$mode")"
    read -r b cb <<<"$(tps t1 "$mode")"
    db+=("$a") rls+=("$b")
    read -r r cr <<<"$(ratio "$a" "$ca" "$b" "$cb")"
    ratios+=("$r") cpu_ratios+=("$cr")
    echo "  $mode rep $rep: database $a tps ($ca CPU-µs/txn), rls $b tps ($cb CPU-µs/txn)," \
      "ratio $r, CPU ratio $cr"
    if [[ $DIRECT == 1 ]]; then
      read -r a ca <<<"$(tps bench "$mode" "$PG_PORT" bench)"
      read -r b cb <<<"$(tps bench_shared "$mode" "$PG_PORT" bench_direct)"
      read -r r cr <<<"$(ratio "$a" "$ca" "$b" "$cb")"
      direct+=("$r") direct_cpu+=("$cr")
      echo "  $mode rep $rep, straight at PostgreSQL: database $a tps ($ca CPU-µs/txn)," \
        "rls $b tps ($cb CPU-µs/txn), ratio $r, CPU ratio $cr"
    fi
  done
  printf '%s: database median %s tps, rls median %s tps, median ratio rls/database %s\n' "$mode" \
    "$(printf '%s\n' "${db[@]}" | median)" "$(printf '%s\n' "${rls[@]}" | median)" \
    "$(printf '%s\n' "${ratios[@]}" | median)"
  printf '%s: median ratio of machine CPU per transaction, database/rls, %s\n' "$mode" \
    "$(printf '%s\n' "${cpu_ratios[@]}" | median)"
  if [[ $DIRECT == 1 ]]; then
    printf '%s, straight at PostgreSQL: median ratio rls/database %s, CPU ratio %s\n' "$mode" \
      "$(printf '%s\n' "${direct[@]}" | median)" "$(printf '%s\n' "${direct_cpu[@]}" | median)"
  fi
done
