#!/usr/bin/env bash
# The proxy's instructions per select-only transaction (callgrind) for
# 1 tenant x CLIENTS clients against CLIENTS tenants x 1 client, on one
# shared placement: the deterministic answer to "does a transaction cost
# the proxy more when its clients belong to many tenants", where TPS on a
# shared machine (benches/many-tenants.sh) swings by more than that.
#
#   benches/tenants-instructions.sh
#   CLIENTS=200 K1=5 K2=25 PROTOCOL=extended benches/tenants-instructions.sh
#
# Each arm runs twice under callgrind, with K1 and K2 transactions per
# client after every client has logged in; (total(K2) - total(K1)) /
# (CLIENTS x (K2 - K1)) is one transaction, start-up and logins cancelled
# out. Tenants get a stored SCRAM verifier and auth is trust, so that
# start-up under valgrind derives nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TENANTS=${TENANTS:-1000}
CLIENTS=${CLIENTS:-1000}
K1=${K1:-4}
K2=${K2:-20}
PROTOCOL=${PROTOCOL:-simple}
SCALE=1
# Above the ephemeral range (32768-60999), apart from the other scripts'.
PG_PORT=${PG_PORT:-61682}
PGTENANT_PORT=${PGTENANT_PORT:-61683}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61684} # unused; bench-cluster.sh names it
(( CLIENTS <= TENANTS )) || { echo "CLIENTS must not exceed TENANTS" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }

# shellcheck source=benches/load-bins.sh
source "$ROOT/benches/load-bins.sh"
# shellcheck source=benches/bench-cluster.sh
source "$ROOT/benches/bench-cluster.sh"

# One verifier for every tenant (password "x"): parsing it costs nothing.
VERIFIER=$(python3 -c '
import base64, hashlib, hmac
salt = b"pgtenant-bench-s"
salted = hashlib.pbkdf2_hmac("sha256", b"x", salt, 4096)
key = lambda k: hmac.new(salted, k, "sha256").digest()
b64 = lambda b: base64.b64encode(b).decode()
print("SCRAM-SHA-256$4096:%s$%s:%s" % (b64(salt), b64(hashlib.sha256(key(b"Client Key")).digest()), b64(key(b"Server Key"))))')
cat >"$W/tenants.toml" <<CONF
[proxy]
listen = "127.0.0.1:$PGTENANT_PORT"
auth_type = "trust"
workers = 1
default_placement = "shared"
default_tenant_max_client_connections = $((2 * CLIENTS > 1000 ? 2 * CLIENTS : 1000))
client_login_timeout = "120s"
client_startup_timeout = "60s"

[placements.shared]
url = "postgres://bench@127.0.0.1:$PG_PORT/bench?require_auth=none"
isolation = "database"
allow_shared_database = true
pool_size = 20

CONF
awk -v n="$TENANTS" -v v="$VERIFIER" 'BEGIN {
  for (i = 0; i < n; i++) printf "[tenants.t%d]\nusers = { app = \"%s\" }\n", i, v
}' >>"$W/tenants.toml"
chmod 644 "$W/tenants.toml"

VG=(valgrind --tool=callgrind --dump-instr=no --collect-jumps=no)
# Runs the proxy under callgrind while $1 tenants x $2 clients run $3
# transactions each; prints the callgrind totals line.
measure() {
  local out=$W/cg.$1.$3 pid i
  PGTENANT_LOG=warn "${VG[@]}" --callgrind-out-file="$out" \
    "$PGTENANT_BIN" -c "$W/tenants.toml" >"$W/pgtenant.out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for i in $(seq 1 600); do
    psql -X -Atq -h 127.0.0.1 -p "$PGTENANT_PORT" -U app.t0 -d bench -c 'select 1' \
      >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$LOAD_BIN" --addr "127.0.0.1:$PGTENANT_PORT" --tenant-pattern 't{}' --user app --dbname bench \
    --tenants "$1" --clients-per-tenant "$2" --transactions "$3" --protocol "$PROTOCOL" \
    --scale "$SCALE" --connect-concurrency 16 >"$W/load.out" 2>&1 ||
    { cat "$W/load.out" >&2; kill "$pid"; exit 1; }
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  sed -n 's/^\(summary\|totals\): //p' "$out" | head -1
}

echo "select-only ($PROTOCOL), $TENANTS tenants configured, one proxy worker, under callgrind;" \
  "per transaction = (run of $K2 - run of $K1 per client) / ($CLIENTS x $((K2 - K1)))"
declare -A PER
for arm in one many; do
  if [[ $arm == one ]]; then t=1 c=$CLIENTS; else t=$CLIENTS c=1; fi
  a=$(measure "$t" "$c" "$K1")
  b=$(measure "$t" "$c" "$K2")
  PER[$arm]=$(awk -v a="$a" -v b="$b" -v n=$((CLIENTS * (K2 - K1))) 'BEGIN {
    split(a, x, " "); split(b, y, " "); printf "%.0f", (y[1] - x[1]) / n }')
  echo "$arm: $t tenant(s) x $c client(s): ${PER[$arm]} instructions per transaction"
done
RATIO=$(awk -v a="${PER[many]}" -v b="${PER[one]}" 'BEGIN {printf "%.3f", a / b}')
echo "instructions per transaction, $CLIENTS tenants / 1 tenant: ${PER[many]} / ${PER[one]} = $RATIO"
echo "SUMMARY protocol=$PROTOCOL tenants_configured=$TENANTS clients=$CLIENTS" \
  "ir_one=${PER[one]} ir_many=${PER[many]} ratio=$RATIO"
