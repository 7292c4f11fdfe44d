#!/usr/bin/env bash
# A profile-guided (PGO) release build of pgtenant: builds an instrumented
# binary, trains it on a throwaway PostgreSQL with the benchmarks' own
# workloads (pgbench through a database placement: select-only simple,
# extended and prepared at 16 and 200 clients, TPC-B, a new connection per
# transaction, and over TLS; then an rls placement, same tenant and
# switching tenants), merges the profiles and builds again with them.
#
#   benches/pgo-build.sh                 # -> target/pgo/pgtenant
#   DURATION=10 benches/pgo-build.sh     # longer training (seconds per case)
#
# Why: the proxy's hot path is many small functions spread over more code
# than the CPU's instruction cache holds (README, "Profile-guided build");
# the profile lets LLVM lay out the hot code together and inline where the
# runs went. Same source, same behaviour: the training only steers code
# layout and inlining.
#
# Needs what the benchmarks need (PostgreSQL server binaries, pgbench,
# openssl for the TLS case) and an llvm-profdata of rustc's own LLVM
# version: `rustup component add llvm-tools` (found in rustc's sysroot),
# or LLVM_PROFDATA=/path. Takes about three builds' time. Never run it
# beside a benchmark.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/target/pgo}
DURATION=${DURATION:-4}
SCALE=${SCALE:-1}
PG_PORT=${PG_PORT:-61652}
PGTENANT_PORT=${PGTENANT_PORT:-61653}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-61654}
t0=$SECONDS
log() { echo "[pgo-build $((SECONDS - t0))s] $*"; }

host=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=${LLVM_PROFDATA:-$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata}
[[ -x $PROFDATA ]] || {
  echo "llvm-profdata not found at $PROFDATA: run 'rustup component add llvm-tools' or set LLVM_PROFDATA" >&2
  exit 1
}
# A raw profile is readable only by the llvm-profdata of the same LLVM major.
want=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
have=$("$PROFDATA" --version 2>/dev/null | sed -n 's/.*LLVM version \([0-9]*\).*/\1/p' | head -n 1 || true)
[[ -n $want && $want == "$have" ]] || {
  echo "$PROFDATA is LLVM ${have:-?}, rustc uses LLVM ${want:-?}: use rustc's own (rustup component add llvm-tools)" >&2
  exit 1
}

# 1. Instrumented build, in a target dir of its own (other RUSTFLAGS would
# otherwise rebuild the ordinary target's dependencies each time).
RAW=$OUT/raw
rm -rf "$RAW"
mkdir -p "$RAW"
log "instrumented build"
RUSTFLAGS="-Cprofile-generate=$RAW" cargo build --release --locked --quiet \
  --manifest-path "$ROOT/Cargo.toml" --bin pgtenant --target-dir "$OUT/gen"
# The build scripts ran instrumented too: their profiles are not the proxy's.
rm -f "$RAW"/*.profraw
GEN=$OUT/gen/release/pgtenant

# 2. Training. Each script below starts and stops its own cluster and
# proxy; the proxy writes its profile when it exits on SIGTERM.
log "training: database placement"
(
  PGTENANT_BIN=$GEN
  source "$ROOT/benches/bench-cluster.sh"
  # Starts the proxy on the config as it is; stop() ends it, which writes
  # its profile.
  start() {
    PGTENANT_LOG=warn "$PGTENANT_BIN" -c "$W/pgtenant.toml" >>"$W/pgtenant.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$PGTENANT_PORT"
  }
  stop() {
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
  }
  run() { pgbench -n -T "$DURATION" -h 127.0.0.1 -p "$PGTENANT_PORT" -U bench "$@" bench >/dev/null; }
  start
  run -S -M simple -c 16 -j 2
  run -S -M extended -c 16 -j 2
  run -S -M prepared -c 16 -j 2
  run -S -M simple -c 200 -j 2
  run -M simple -c 16 -j 2
  run -S -M simple -c 16 -j 2 -C
  stop
  # The same placement over TLS (a second proxy run: with [tls] set, the
  # plaintext cases above would have negotiated TLS too).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$W/server.key" -out "$W/server.crt" -subj "/CN=localhost" -days 2 >/dev/null 2>&1
  printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$W/server.crt" "$W/server.key" >>"$W/pgtenant.toml"
  start
  PGSSLMODE=require run -S -M extended -c 16 -j 2
  PGSSLMODE=require run -S -M simple -c 16 -j 2 -C
  stop
)
# The rls scripts talk a lot (notices, the vetting's warnings): their
# output goes to a log, shown when they fail.
quiet() {
  "$@" >"$OUT/training.log" 2>&1 || { tail -n 30 "$OUT/training.log" >&2; exit 1; }
}
log "training: rls placement, one tenant"
quiet env REPS=1 DURATION="$DURATION" MODES="simple extended" PGTENANT_BIN="$GEN" \
  bash "$ROOT/benches/rls-vs-database.sh"
log "training: rls placement, switching tenants"
quiet env ISOLATION=rls ROUNDS=1 DURATION="${DURATION}s" SMALL=0 TENANTS=200 CLIENTS=200 \
  PGTENANT_BIN="$GEN" bash "$ROOT/benches/many-tenants.sh"
ls "$RAW"/*.profraw >/dev/null 2>&1 || { echo "the training left no profile in $RAW" >&2; exit 1; }

# 3. Merge, then the optimized build.
"$PROFDATA" merge -o "$OUT/pgtenant.profdata" "$RAW"/*.profraw
log "optimized build"
RUSTFLAGS="-Cprofile-use=$OUT/pgtenant.profdata" cargo build --release --locked --quiet \
  --manifest-path "$ROOT/Cargo.toml" --bin pgtenant --target-dir "$OUT/use"
cp "$OUT/use/release/pgtenant" "$OUT/pgtenant"
log "done: $OUT/pgtenant"
