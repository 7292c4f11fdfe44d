#!/usr/bin/env bash
# Where a proxy build's CPU per transaction goes: user and system time
# (from /proc/PID/stat) and the system calls it makes per transaction,
# by kind (perf's syscall tracepoints), for each build in BINS in turn,
# pgbench select-only through a database placement. Counts are exact;
# times move with the machine's load, so list the builds alternately
# (BINS="A B A B") and compare pairs.
#
#   BINS="/tmp/old/pgtenant target/release/pgtenant" CLIENTS=200 benches/syscalls.sh
#
# Needs perf (linux-perf) with tracepoints readable (root), the
# PostgreSQL server binaries and pgbench. The time is measured in its own
# run, without perf attached: counting tracepoints slows every system
# call.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLIENTS=${CLIENTS:-200}
TXNS=${TXNS:-1000} # per client
SCALE=1
PG_PORT=${PG_PORT:-61662}
PGTENANT_PORT=${PGTENANT_PORT:-61663}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61664}
[[ -n ${BINS:-} ]] || { echo "set BINS to the builds to compare" >&2; exit 1; }
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
PGTENANT_BIN=${BINS%% *}
# shellcheck source=benches/bench-cluster.sh
source "$ROOT/benches/bench-cluster.sh"

CALLS=(recvfrom recvmsg read sendto sendmsg write writev io_uring_enter epoll_wait epoll_pwait
  epoll_ctl futex)
EVENTS=$(printf 'syscalls:sys_enter_%s,' "${CALLS[@]}")io_uring:io_uring_submit_req
N=$((CLIENTS * TXNS))
bench() {
  pgbench -n -S -c "$CLIENTS" -j 2 -t "$TXNS" -h 127.0.0.1 -p "$PGTENANT_PORT" -U bench bench \
    >/dev/null 2>&1
}
for bin in $BINS; do
  fit_config "$bin" "$W/run.toml"
  PGTENANT_LOG=warn "$bin" -c "$W/run.toml" >"$W/run.out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$PGTENANT_PORT"
  # Warm-up: every client logged in once, the pool full.
  pgbench -n -S -c "$CLIENTS" -j 2 -T 3 -h 127.0.0.1 -p "$PGTENANT_PORT" -U bench bench >/dev/null 2>&1
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  bench
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  perf stat -x, -e "$EVENTS" -p "$pid" -o "$W/perf.out" &
  perf_pid=$!
  sleep 0.5
  bench
  kill -INT "$perf_pid"
  wait "$perf_pid" || true
  hz=$(getconf CLK_TCK)
  awk -v n="$N" -v hz="$hz" -v b="$bin" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
    'BEGIN {printf "%s: user %.2f µs, system %.2f µs per transaction\n", b, u / hz * 1e6 / n, s / hz * 1e6 / n}'
  awk -F, -v n="$N" '$3 ~ /:/ && $1 + 0 > 0 {sub(/.*:(sys_enter_)?/, "", $3); printf "  %-20s %.3f per transaction\n", $3, $1 / n}' \
    "$W/perf.out"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
done
