#!/usr/bin/env bash
# Instructions per transaction, counted by valgrind (callgrind): a
# deterministic figure for the proxy's user-space cost, where CPU time on
# a shared VM moves by several percent between runs.
#
#   benches/instructions.sh                    # pgtenant and PgBouncer, pgbench -S
#   MODE=extended benches/instructions.sh      # pgbench -M extended
#   TARGETS=pgtenant CACHE=1 benches/instructions.sh   # + L1 miss counts
#   CONNECT=1 N1=400 N2=2000 benches/instructions.sh  # pgbench -C: a new
#                                              # connection per transaction
#   CLIENTS=1 benches/instructions.sh          # one client: as many loop
#                                              # turns per transaction in
#                                              # every run (with 16, how
#                                              # many requests a turn
#                                              # serves varies with the
#                                              # machine's load, and with
#                                              # it the runtime's share)
#
# Each target runs twice under callgrind, for N1 and N2 transactions after
# the same warm-up; the difference of the two totals divided by N2 - N1 is
# the cost of one transaction, with start-up and shutdown cancelled out.
# Only 127.0.0.1 is used; everything started here is stopped by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${MODE:-simple}
TARGETS=${TARGETS:-"pgtenant pgbouncer"}
N1=${N1:-4000}
N2=${N2:-20000}
CACHE=${CACHE:-0}
CONNECT=${CONNECT:-0}
CLIENTS=${CLIENTS:-16}
SCALE=1
# Above the ephemeral range (32768-60999): see compare.sh.
PG_PORT=${PG_PORT:-61632}
PGTENANT_PORT=${PGTENANT_PORT:-61633}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61634}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# shellcheck source=benches/bench-cluster.sh
source "$ROOT/benches/bench-cluster.sh"

VG=(valgrind --tool=callgrind --dump-instr=no --collect-jumps=no)
[[ $CACHE == 1 ]] && VG+=(--cache-sim=yes)

# Runs target $1 under callgrind for $2 measured transactions; prints the
# callgrind totals line (event counts). Runs in a subshell ($(...)), so it
# stops its own proxy, on failure too.
measure() {
  local target=$1 n=$2 out=$W/cg.$1.$2 pid
  local port=$PGTENANT_PORT
  case $target in
    pgtenant) PGTENANT_LOG=warn "${VG[@]}" --callgrind-out-file="$out" \
                "$PGTENANT_BIN" -c "$W/pgtenant.toml" >"$W/$target.out" 2>&1 & ;;
    pgbouncer) port=$PGBOUNCER_PORT
               "${AS[@]}" "${VG[@]}" --callgrind-out-file="$out" \
                "$PGBOUNCER_BIN" "$W/pgbouncer.ini" >"$W/$target.out" 2>&1 & ;;
  esac
  pid=$!
  PIDS+=("$pid")
  wait_port "$port"
  local args=(-n -S -M "$MODE" -c "$CLIENTS" -j "$(( CLIENTS > 1 ? 2 : 1 ))" -h 127.0.0.1 -p "$port" -U bench bench)
  [[ $CONNECT == 1 ]] && args+=(-C)
  pgbench "${args[@]}" -t 100 >/dev/null 2>&1
  pgbench "${args[@]}" -t $((n / CLIENTS)) 2>&1 | grep -q "actually processed: $n/$n" ||
    { echo "$target: pgbench did not complete $n transactions" >&2; kill "$pid"; exit 1; }
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  sed -n 's/^events: //p' "$out" >"$W/events"
  sed -n 's/^\(summary\|totals\): //p' "$out" | head -1
}

echo "pgbench -S -M $MODE -c $CLIENTS$([[ $CONNECT == 1 ]] && echo " -C"), one worker; per transaction = (run of $N2 - run of $N1) / $((N2 - N1))"
for t in $TARGETS; do
  if [[ $t == pgbouncer && ! -x $PGBOUNCER_BIN ]]; then echo "pgbouncer: $PGBOUNCER_BIN missing, skipped"; continue; fi
  a=$(measure "$t" "$N1")
  b=$(measure "$t" "$N2")
  awk -v a="$a" -v b="$b" -v ev="$(cat "$W/events")" -v n=$((N2 - N1)) -v t="$t" 'BEGIN {
    split(a, x, " "); split(b, y, " "); k = split(ev, e, " ");
    line = sprintf("%-10s", t);
    for (i = 1; i <= k; i++) line = line sprintf("  %s %.1f", e[i], (y[i] - x[i]) / n);
    print line
  }'
done
