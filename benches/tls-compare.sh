#!/usr/bin/env bash
# Select-only pgbench over TLS through pgtenant and through PgBouncer
# (client_tls_sslmode = require), same cluster, same certificate, same
# run, reps interleaved: proxy CPU per transaction (utime+stime from
# /proc over the run / transactions) and TPS, medians, and the ratio
# pgtenant/PgBouncer. Plaintext runs alongside for reference.
#
#   benches/tls-compare.sh                    # 5 reps of 10 s, 16 clients
#   REPS=3 DURATION=10 CLIENTS=16 benches/tls-compare.sh
#   PGTENANT_BIN=/path/to/build benches/tls-compare.sh
#
# Ratios from one run only: these machines are shared and noisy. Needs
# pgbench, openssl and the PostgreSQL server binaries; installs PgBouncer
# with apt-get when missing (as root).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-16}
SCALE=${SCALE:-10}
PG_PORT=${PG_PORT:-61672}
PGTENANT_PORT=${PGTENANT_PORT:-61673}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61674}
if ! command -v pgbouncer >/dev/null && [[ $(id -u) -eq 0 ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null
  service pgbouncer stop >/dev/null 2>&1 || true
fi
# shellcheck source=benches/bench-cluster.sh
source "$ROOT/benches/bench-cluster.sh"

# One self-signed ECDSA certificate for both proxies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$W/server.key" -out "$W/server.crt" -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost" -days 2 >/dev/null 2>&1
chmod 644 "$W/server.key" "$W/server.crt"
cat >>"$W/pgtenant.toml" <<CONF
[tls]
cert = "$W/server.crt"
key = "$W/server.key"
CONF
cat >>"$W/pgbouncer.ini" <<CONF
client_tls_sslmode = allow
client_tls_cert_file = $W/server.crt
client_tls_key_file = $W/server.key
CONF

"$PGTENANT_BIN" -c "$W/pgtenant.toml" >"$W/pgtenant.log" 2>&1 &
PGT_PID=$!
PIDS+=("$PGT_PID")
"${AS[@]}" pgbouncer "$W/pgbouncer.ini" >/dev/null 2>&1 &
PGB_PID=$!
PIDS+=("$PGB_PID")
wait_port "$PGTENANT_PORT"
wait_port "$PGBOUNCER_PORT"

# PgBouncer runs as a child of setpriv when root: measure the real one.
pgb_pid=$(pgrep -f "pgbouncer $W/pgbouncer.ini" | tail -1)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run NAME PORT PID SSLMODE: prints "cpu_us_per_txn tps".
run() {
  local port=$2 pid=$3 mode=$4 before after out tps txns
  before=$(ticks "$pid")
  out=$(PGSSLMODE=$mode pgbench -n -S -M simple -c "$CLIENTS" -j 2 -T "$DURATION" \
    -h 127.0.0.1 -p "$port" -U bench bench 2>&1)
  after=$(ticks "$pid")
  txns=$(awk '/number of transactions actually processed/ {print $NF}' <<<"$out" | cut -d/ -f1)
  tps=$(awk '/^tps/ {print $3; exit}' <<<"$out")
  [[ -n $txns && $txns -gt 0 ]] || { echo "$1: pgbench failed: $out" >&2; exit 1; }
  echo "$(echo "($after - $before) * 1000000 / $hz / $txns" | bc -l) $tps"
}

declare -A CPU TPS
for rep in $(seq 1 "$REPS"); do
  for target in "pgtenant-tls $PGTENANT_PORT $PGT_PID require" \
    "pgbouncer-tls $PGBOUNCER_PORT $pgb_pid require" \
    "pgtenant-plain $PGTENANT_PORT $PGT_PID disable" \
    "pgbouncer-plain $PGBOUNCER_PORT $pgb_pid disable"; do
    read -r name port pid mode <<<"$target"
    read -r cpu tps < <(run "$name" "$port" "$pid" "$mode")
    CPU[$name]+="$cpu "
    TPS[$name]+="$tps "
    printf 'rep %d %-16s %8.2f us/txn %10.0f tps\n' "$rep" "$name" "$cpu" "$tps"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "| target | proxy CPU µs/txn (median) | TPS (median) |"
echo "|---|---:|---:|"
for name in pgtenant-tls pgbouncer-tls pgtenant-plain pgbouncer-plain; do
  printf '| %s | %.2f | %.0f |\n' "$name" "$(median <<<"${CPU[$name]}")" "$(median <<<"${TPS[$name]}")"
done
tls_ratio=$(echo "$(median <<<"${CPU[pgtenant-tls]}") / $(median <<<"${CPU[pgbouncer-tls]}")" | bc -l)
plain_ratio=$(echo "$(median <<<"${CPU[pgtenant-plain]}") / $(median <<<"${CPU[pgbouncer-plain]}")" | bc -l)
printf '\npgtenant/PgBouncer proxy CPU per transaction: TLS %.3f, plaintext %.3f (select-only simple, %d clients, %d reps of %d s)\n' \
  "$tls_ratio" "$plain_ratio" "$CLIENTS" "$REPS" "$DURATION"
