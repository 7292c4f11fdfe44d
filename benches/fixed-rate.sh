#!/usr/bin/env bash
# Proxy CPU per transaction for pgtenant and PgBouncer at the same offered
# load (pgbench -R), runs interleaved, medians of REPS.
#
#   benches/fixed-rate.sh                         # 10 000 txn/s, pgbench -S
#   RATE=6000 MODE=extended REPS=7 benches/fixed-rate.sh
#   PGTENANT_BIN=a/pgtenant PGTENANT2_BIN=b/pgtenant benches/fixed-rate.sh
#
# With PGTENANT2_BIN, a second pgtenant build runs beside the first (same
# config, its own port), interleaved with the others, and the script
# prints the paired ratio second/first of CPU per transaction (an A/B).
#
# Why besides benches/compare.sh: there every target runs flat out, and on
# a host where pgbench, PostgreSQL and the proxy share the cores, CPU per
# transaction falls as throughput rises (more work per wake-up), so a run
# that happens to get more throughput also looks cheaper. At a fixed rate
# both proxies do the same work per second and the figure compares their
# cost alone. Pick a RATE both sustain (the script says when one did not).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-10000}
DURATION=${DURATION:-10}
REPS=${REPS:-5}
MODE=${MODE:-simple}
SCALE=${SCALE:-10}
# Above the ephemeral range (32768-60999): see compare.sh.
PG_PORT=${PG_PORT:-61642}
PGTENANT_PORT=${PGTENANT_PORT:-61643}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61644}
PGTENANT2_PORT=${PGTENANT2_PORT:-61645}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
[[ -x $PGBOUNCER_BIN ]] || { echo "needs PgBouncer at $PGBOUNCER_BIN" >&2; exit 1; }
# shellcheck source=benches/bench-cluster.sh
source "$ROOT/benches/bench-cluster.sh"

"${AS[@]}" "$PGBOUNCER_BIN" "$W/pgbouncer.ini" >"$W/pgbouncer.out" 2>&1 &
PIDS+=($!)
declare -A PID=([pgbouncer]=$!)
PGTENANT_LOG=warn "$PGTENANT_BIN" -c "$W/pgtenant.toml" >"$W/pgtenant.out" 2>&1 &
PIDS+=($!)
PID[pgtenant]=$!
declare -A PORT=([pgbouncer]=$PGBOUNCER_PORT [pgtenant]=$PGTENANT_PORT)
TARGETS=(pgbouncer pgtenant)
if [[ -n ${PGTENANT2_BIN:-} ]]; then
  sed "s/:$PGTENANT_PORT\"/:$PGTENANT2_PORT\"/" "$W/pgtenant.toml" >"$W/pgtenant2.toml"
  PGTENANT_LOG=warn "$PGTENANT2_BIN" -c "$W/pgtenant2.toml" >"$W/pgtenant2.out" 2>&1 &
  PIDS+=($!)
  PID[pgtenant2]=$!
  PORT[pgtenant2]=$PGTENANT2_PORT
  TARGETS+=(pgtenant2)
fi
for t in "${TARGETS[@]}"; do wait_port "${PORT[$t]}"; done

ticks() { awk '{sub(/^.*\) /, ""); print $12, $13}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
args=(-n -S -M "$MODE" -c 16 -j 2 -h 127.0.0.1 -U bench)
for t in "${TARGETS[@]}"; do # warm-up: fills the pools
  pgbench "${args[@]}" -p "${PORT[$t]}" -T 3 bench >/dev/null 2>&1
done

echo "pgbench -S -M $MODE -c 16 -R $RATE, ${DURATION}s runs; proxy CPU in µs per transaction"
printf '%-4s %-10s %8s %6s %6s %6s\n' rep target tps user sys total
declare -A ROWS=()
for rep in $(seq 1 "$REPS"); do
  # Each rep starts with the next target, so none always runs first.
  k=$(((rep - 1) % ${#TARGETS[@]}))
  order=("${TARGETS[@]:k}" "${TARGETS[@]:0:k}")
  for t in "${order[@]}"; do
    read -r u0 s0 < <(ticks "${PID[$t]}")
    out=$(pgbench "${args[@]}" -p "${PORT[$t]}" -R "$RATE" -T "$DURATION" bench 2>&1)
    read -r u1 s1 < <(ticks "${PID[$t]}")
    n=$(awk -F': ' '/actually processed/{split($2, a, "/"); print a[1]}' <<<"$out")
    tps=$(awk '/^tps = /{printf "%.0f", $3}' <<<"$out")
    row=$(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v h="$HZ" \
      'BEGIN {printf "%.2f %.2f %.2f", u * 1e6 / h / n, s * 1e6 / h / n, (u + s) * 1e6 / h / n}')
    ROWS[$t]="${ROWS[$t]:-}$row"$'\n'
    printf '%-4s %-10s %8s %6s %6s %6s\n' "$rep" "$t" "$tps" $row
    if ((tps < RATE * 95 / 100)); then echo "  $t did not sustain $RATE txn/s: lower RATE" >&2; fi
  done
done
echo "medians:"
for t in "${TARGETS[@]}"; do
  printf '%-10s' "$t"
  for col in 1 2 3; do
    printf ' %6s' "$(awk -v c=$col 'NF {print $c}' <<<"${ROWS[$t]}" | sort -n |
      awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}')"
  done
  echo "   (user sys total)"
done
if [[ -n ${PGTENANT2_BIN:-} ]]; then
  # Paired: rep i of the second build against rep i of the first.
  paste <(awk 'NF {print $3}' <<<"${ROWS[pgtenant]}") <(awk 'NF {print $3}' <<<"${ROWS[pgtenant2]}") |
    awk '{r[NR] = $2 / $1; printf "%s%.3f", (NR > 1 ? " " : "pgtenant2/pgtenant per rep: "), r[NR]} END {print ""}'
  paste <(awk 'NF {print $3}' <<<"${ROWS[pgtenant]}") <(awk 'NF {print $3}' <<<"${ROWS[pgtenant2]}") |
    awk '{print $2 / $1}' | sort -n |
    awk '{a[NR] = $1} END {printf "paired median pgtenant2/pgtenant: %.3f\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
fi
