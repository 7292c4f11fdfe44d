#!/usr/bin/env bash
# Started by anchors.sh (through benches/compare.sh) once its PostgreSQL is
# up: writes a one-tenant pgtenant config from the BENCH_* variables and
# execs the proxy. Tenant "bench" is named by the database pgbench uses.
set -euo pipefail
auth=scram-sha-256
[[ ${BENCH_AUTH_METHOD:-trust} == trust ]] && auth=trust
cfg=$BENCH_WORKDIR/pgtenant.toml
cat >"$cfg" <<TOML
[proxy]
listen = "127.0.0.1:${PROXY_PORT}"
pool_mode = "transaction"
auth_type = "$auth"
workers = ${PGTENANT_WORKERS:-0}
tenant_from = ["options", "user", "database"]

[placements.bench]
url = "postgres://${BENCH_USER}:${BENCH_PASSWORD}@${BENCH_PG_HOST}:${BENCH_PG_PORT}/${BENCH_DB}"
isolation = "database"
pool_size = ${BENCH_POOL_SIZE}

[tenants.bench]
placement = "bench"
users = { ${BENCH_USER} = "${BENCH_PASSWORD}" }
TOML
PGTENANT_LOG=${PGTENANT_LOG:-warn} exec "$PGTENANT_BIN" -c "$cfg"
