#!/usr/bin/env bash
# A/B of two pgtenant binaries in one run of the shared reference script
# (../shared/bench/anchors.sh): A in the PROXY slot, B in the PROXY2 slot,
# same throwaway cluster, same pgbench cases, interleaved. Prints the
# anchors table, then per case the paired ratio B/A of proxy CPU per
# transaction (each repetition's B against the same repetition's A) and
# its median.
#
#   A=/path/old/pgtenant B=target/release/pgtenant REPS=5 DURATION=10 \
#     CASES="sel16_simple sel16_ext sel200_simple" benches/ab.sh
#
# Builds nothing: build both binaries first, and never run this beside a
# build (the machines are small and shared; report ratios, not times).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ANCHORS=${ANCHORS:-$ROOT/../shared/bench/anchors.sh}
[[ -f $ANCHORS ]] || { echo "anchors.sh not found at $ANCHORS (set ANCHORS=...)" >&2; exit 1; }
: "${A:?set A to the first (old) pgtenant binary}" "${B:?set B to the second (new) binary}"
export PGTENANT_WORKERS=${PGTENANT_WORKERS:-0}
export PG_PORT=${PG_PORT:-61432} PGB_PORT=${PGB_PORT:-61433}
export PROXY_PORT=${PROXY_PORT:-61440} PROXY2_PORT=${PROXY2_PORT:-61441}
export PROXY_NAME=${A_NAME:-pgtenant-A} PROXY2_NAME=${B_NAME:-pgtenant-B}
export PROXY_DB=bench PROXY_USER=bench PROXY_PASSWORD=bench
export PROXY_CMD="$ROOT/benches/pgtenant-under-bench.sh $A"
export PROXY2_CMD="$ROOT/benches/pgtenant-under-bench.sh $B"
export TARGETS=${TARGETS:-"pg proxy proxy2"}
export RESULTS_DIR=${RESULTS_DIR:-/tmp/ab-results-$(date +%Y%m%d-%H%M%S)}
bash "$ANCHORS"

# Per case, the paired ratio num/den of proxy CPU per transaction (each
# repetition of target num against the same repetition of den) and its
# median.
paired() {
  local num=$1 den=$2 title=$3
  echo
  echo "Paired proxy CPU per transaction, $title (same case, same repetition):"
  echo
  echo "| case | per repetition | median |"
  echo "|---|---|---:|"
  awk -F'\t' -v num="$num" -v den="$den" '
  NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  $col["rc"] == 0 && $col["xacts"] > 0 && ($col["target"] == num || $col["target"] == den) {
    us[$col["case"] SUBSEP $col["rep"] SUBSEP $col["target"]] = $col["proxy_cpu_s"] / $col["xacts"]
    cases[$col["case"]] = 1; reps[$col["rep"]] = 1
  }
  END {
    for (c in cases) {
      n = 0; line = ""
      for (r in reps) {
        a = us[c SUBSEP r SUBSEP den]; b = us[c SUBSEP r SUBSEP num]
        if (a > 0 && b > 0) { v[++n] = b / a; line = line sprintf(" %.3f", b / a) }
      }
      # insertion sort for the median
      for (i = 2; i <= n; i++) { x = v[i]; j = i - 1; while (j > 0 && v[j] > x) { v[j + 1] = v[j]; j-- } v[j + 1] = x }
      med = n ? (n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2) : 0
      printf "| %s |%s | %.3f |\n", c, line, med
    }
  }' "$RESULTS_DIR/results.tsv"
}

paired proxy2 proxy "B/A ($PROXY2_NAME / $PROXY_NAME)"
# With PgBouncer among the targets (TARGETS="pg pgbouncer proxy proxy2"),
# each build against it too.
if [[ " $TARGETS " == *" pgbouncer "* ]]; then
  paired proxy pgbouncer "$PROXY_NAME / PgBouncer"
  paired proxy2 pgbouncer "$PROXY2_NAME / PgBouncer"
fi
