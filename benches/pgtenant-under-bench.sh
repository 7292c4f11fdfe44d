#!/usr/bin/env bash
# Started by anchors.sh (through benches/compare.sh or benches/ab.sh) once
# its PostgreSQL is up: writes a one-tenant pgtenant config from the BENCH_*
# variables and execs the proxy. Tenant "bench" is named by the database
# pgbench uses. Optional argument: the binary (default $PGTENANT_BIN); in
# the PROXY2 slot anchors.sh passes the port as BENCH_PROXY_PORT.
set -euo pipefail
bin=${1:-$PGTENANT_BIN}
port=${BENCH_PROXY_PORT:-$PROXY_PORT}
auth=scram-sha-256
[[ ${BENCH_AUTH_METHOD:-trust} == trust ]] && auth=trust
cfg=$BENCH_WORKDIR/pgtenant-$port.toml
cat >"$cfg" <<TOML
[proxy]
listen = "127.0.0.1:${port}"
pool_mode = "transaction"
auth_type = "$auth"
workers = ${PGTENANT_WORKERS:-0}
tenant_from = ["options", "user", "database"]

[placements.bench]
url = "postgres://${BENCH_USER}:${BENCH_PASSWORD}@${BENCH_PG_HOST}:${BENCH_PG_PORT}/${BENCH_DB}?require_auth=scram-sha-256,md5,password,none"
isolation = "database"
pool_size = ${BENCH_POOL_SIZE}

[tenants.bench]
placement = "bench"
users = { ${BENCH_USER} = "${BENCH_PASSWORD}" }
TOML
# Builds before require_auth (which default to whatever the server asks)
# refuse the parameter: drop it for them.
if ! "$bin" -c "$cfg" check >/dev/null 2>&1; then
  sed -i 's/?require_auth=[^"]*"/"/' "$cfg"
fi
PGTENANT_LOG=${PGTENANT_LOG:-warn} exec "$bin" -c "$cfg"
