# Sourced by the many-tenant benchmarks: the release proxy and the
# tenants_load generator (benches/tenants_load.rs), unless PGTENANT_BIN and
# LOAD_BIN name builds to measure. In: ROOT. Out: PGTENANT_BIN (exported),
# LOAD_BIN.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z ${PGTENANT_BIN:-} ]]; then
  cargo build --release --quiet --bin pgtenant --manifest-path "$ROOT/Cargo.toml"
  PGTENANT_BIN=$TARGET/release/pgtenant
fi
if [[ -z ${LOAD_BIN:-} ]]; then
  LOAD_BIN=$(cargo bench --quiet --bench tenants_load --no-run --message-format=json \
    --manifest-path "$ROOT/Cargo.toml" |
    grep -o '"executable":"[^"]*tenants_load[^"]*"' | tail -1 | cut -d'"' -f4)
  [[ -x $LOAD_BIN ]] || { echo "cannot find the tenants_load binary" >&2; exit 1; }
fi
export PGTENANT_BIN
