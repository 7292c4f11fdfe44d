#!/usr/bin/env bash
# Installs the real client drivers that tests/drivers.rs runs against the
# proxy: psycopg 3 and asyncpg from PyPI (tests/drivers/python/
# requirements.txt), node-postgres and postgres.js from the npm registry
# (tests/drivers/node/package-lock.json). Exact versions, idempotent.
# Installs python3/pip and Node.js/npm from Debian's packages when missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

apt_updated=""
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: $* missing and not root: install them first" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$apt_updated" ]; then
    apt-get update -q
    apt_updated=1
  fi
  apt-get install -y -q "$@"
}

# Python drivers.
if ! command -v python3 >/dev/null 2>&1; then
  echo "python3 missing: installing it"
  apt_install python3 python3-pip
elif ! python3 -m pip --version >/dev/null 2>&1; then
  echo "pip missing: installing it"
  apt_install python3-pip
fi
pip_flags=(--quiet --disable-pip-version-check --no-input)
if python3 -m pip install --help 2>/dev/null | grep -q -- --root-user-action; then
  pip_flags+=(--root-user-action=ignore)
fi
# A Debian-managed interpreter refuses plain pip installs (PEP 668).
if [ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]; then
  pip_flags+=(--break-system-packages)
fi
python3 -m pip install "${pip_flags[@]}" -r "$here/python/requirements.txt"

# Node.js drivers.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node/npm missing: installing them"
  apt_install nodejs npm
fi
npm ci --prefix "$here/node" --no-audit --no-fund --loglevel=error

python3 - <<'PY'
import asyncpg, psycopg
print(f"drivers: psycopg {psycopg.__version__} ({psycopg.pq.__impl__}), asyncpg {asyncpg.__version__}")
PY
node -e "const v = (p) => require('$here/node/node_modules/' + p + '/package.json').version; console.log('drivers: pg ' + v('pg') + ', postgres ' + v('postgres'))"
