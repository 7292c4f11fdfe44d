#!/usr/bin/env bash
# Memory an idle client costs in the proxy: N clients log in, run one
# `SELECT 1` and stay connected doing nothing; the proxy's RSS before and
# after, divided by N. pgtenant and PgBouncer, same machine, same run.
#
#   benches/idle-clients.sh                  # N = 900 and 10000
#   COUNTS="10000" benches/idle-clients.sh
#   PGTENANT_BIN=/path/to/other/build benches/idle-clients.sh
#   TLS=1 benches/idle-clients.sh            # clients encrypt (SSLRequest),
#                                            # both proxies on one certificate
#
# Needs the PostgreSQL server binaries, pgbench (for the shared cluster
# script) and python3; installs PgBouncer with apt-get when missing (as
# root). The client side is benches/idle_clients.py (raw protocol, trust).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=${COUNTS:-"900 10000"}
TLS=${TLS:-0}
SCALE=1
# Above the ephemeral range (32768-60999): see compare.sh.
PG_PORT=${PG_PORT:-61662}
PGTENANT_PORT=${PGTENANT_PORT:-61663}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61664}
if ! command -v pgbouncer >/dev/null && [[ $(id -u) -eq 0 ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null
  service pgbouncer stop >/dev/null 2>&1 || true
fi
# shellcheck source=benches/bench-cluster.sh
source "$ROOT/benches/bench-cluster.sh"
# Room for every client on both proxies.
sed -i 's/^max_client_conn = .*/max_client_conn = 20000/' "$W/pgbouncer.ini"
sed -i 's/^\[proxy\]$/[proxy]\nmax_client_connections = 20000/' "$W/pgtenant.toml"
echo "max_client_connections = 20000" >>"$W/pgtenant.toml" # [tenants.bench]
ulimit -n "$(ulimit -Hn)"
CLIENT_TLS=()
if [[ $TLS == 1 ]]; then
  # One self-signed ECDSA certificate for both proxies (as tls-compare.sh).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$W/server.key" -out "$W/server.crt" -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost" -days 2 >/dev/null 2>&1
  chmod 644 "$W/server.key" "$W/server.crt"
  printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$W/server.crt" "$W/server.key" >>"$W/pgtenant.toml"
  printf 'client_tls_sslmode = require\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\n' \
    "$W/server.crt" "$W/server.key" >>"$W/pgbouncer.ini"
  CLIENT_TLS=(tls)
fi

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# measure NAME PORT PID N: prints one table row.
measure() {
  local name=$1 port=$2 pid=$3 n=$4 before after ready
  before=$(rss_kb "$pid")
  coproc CLIENTS { python3 "$ROOT/benches/idle_clients.py" 127.0.0.1 "$port" bench bench "$n" "${CLIENT_TLS[@]}"; }
  read -r ready _ secs <&"${CLIENTS[0]}" || { echo "$name: clients failed" >&2; return 1; }
  sleep 2 # let the proxy settle (buffers shrunk, nothing in flight)
  after=$(rss_kb "$pid")
  printf '| %s | %d | %d | %d | %.0f | %s |\n' "$name" "$n" "$before" "$after" \
    "$(echo "($after - $before) * 1024 / $n" | bc -l)" "$secs"
  echo >&"${CLIENTS[1]}"
  wait "$CLIENTS_PID" 2>/dev/null || true
  sleep 1
}

"$PGTENANT_BIN" -c "$W/pgtenant.toml" >"$W/pgtenant.log" 2>&1 &
PGT_PID=$!
PIDS+=("$PGT_PID")
"${AS[@]}" bash -c "ulimit -n $(ulimit -Hn); exec pgbouncer '$W/pgbouncer.ini'" >/dev/null 2>&1 &
PGB_PID=$!
PIDS+=("$PGB_PID")
wait_port "$PGTENANT_PORT"
wait_port "$PGBOUNCER_PORT"

echo "| proxy | idle clients | RSS before kB | RSS with them kB | bytes per idle client | seconds to open |"
echo "|---|---:|---:|---:|---:|---:|"
for n in $COUNTS; do
  measure pgtenant "$PGTENANT_PORT" "$PGT_PID" "$n"
  measure pgbouncer "$PGBOUNCER_PORT" "$PGB_PID" "$n"
done
