#!/usr/bin/env bash
# Measures pgtenant against direct PostgreSQL and PgBouncer in one run,
# with the shared reference script (../shared/bench/anchors.sh): same
# throwaway cluster, same pgbench cases, interleaved, medians of REPS.
#
#   benches/compare.sh                      # all cases, 3 reps of 15 s
#   CASES="sel16_simple sel16_ext" REPS=3 DURATION=10 benches/compare.sh
#   PGTENANT_WORKERS=1 benches/compare.sh   # pin the worker count
#
# Report ratios and proxy µs/txn from one run, never absolute times: the
# machines are shared and noisy. Needs pgbench and the PostgreSQL server
# binaries; installs PgBouncer with apt-get when missing (as root).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ANCHORS=${ANCHORS:-$ROOT/../shared/bench/anchors.sh}
[[ -f $ANCHORS ]] || { echo "anchors.sh not found at $ANCHORS (set ANCHORS=...)" >&2; exit 1; }

if ! command -v pgbouncer >/dev/null && [[ $(id -u) -eq 0 ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null
  # The package starts a system instance; the benchmark starts its own.
  service pgbouncer stop >/dev/null 2>&1 || true
fi

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
export PGTENANT_BIN=$ROOT/target/release/pgtenant
export PGTENANT_WORKERS=${PGTENANT_WORKERS:-0}
export PROXY_NAME=${PROXY_NAME:-pgtenant}
# Listening ports above Linux's default ephemeral range (32768-60999):
# a port in it may be held by a TIME_WAIT connection of an earlier run,
# and then PostgreSQL or a proxy cannot bind it.
export PG_PORT=${PG_PORT:-61432} PGB_PORT=${PGB_PORT:-61433}
export PROXY_PORT=${PROXY_PORT:-61440}
export PROXY_DB=bench PROXY_USER=bench PROXY_PASSWORD=bench
# anchors.sh exports BENCH_* before starting this; it writes the config
# from them and execs the proxy.
export PROXY_CMD="$ROOT/benches/pgtenant-under-bench.sh"
exec bash "$ANCHORS"
