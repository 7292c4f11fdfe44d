#!/usr/bin/env bash
# Installs the manifest validators that tests/deploy_manifests.rs runs:
# kubernetes-validate from PyPI (tests/deploy/requirements.txt) and
# @kubernetes-models/prometheus-operator plus TypeScript from the npm
# registry (tests/deploy/node/package-lock.json). Exact versions,
# idempotent. Installs python3/pip and Node.js/npm from Debian's packages
# when missing.
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
python3 -m pip install "${pip_flags[@]}" -r "$here/requirements.txt"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node/npm missing: installing them"
  apt_install nodejs npm
fi
npm ci --prefix "$here/node" --no-audit --no-fund --loglevel=error

python3 -c 'import kubernetes_validate as k; print(f"deploy validators: kubernetes-validate {k.__version__}")'
node -e "const v = (p) => require('$here/node/node_modules/' + p + '/package.json').version; console.log('deploy validators: @kubernetes-models/prometheus-operator ' + v('@kubernetes-models/prometheus-operator') + ', typescript ' + v('typescript'))"
