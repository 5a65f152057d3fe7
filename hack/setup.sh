#!/usr/bin/env bash
# Install everything the tests and the demo need, idempotently, on a fresh machine:
# Debian's Prometheus, a virtualenv with the package and its test tools, the cached
# Kubernetes/etcd/kwok/fortio binaries (hack/cluster/build.sh) and the cached kustomize/helm
# renderers of app folders (hack/render-tools/build.sh).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if ! command -v prometheus >/dev/null; then
  log "installing Debian's prometheus"
  if [ "$(id -u)" -ne 0 ]; then
    echo "prometheus is missing and this is not root: run 'sudo apt-get install prometheus'" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

venv="$repo/.venv"
stamp="$venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "creating the virtualenv in .venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e ".[test]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi

bash hack/cluster/build.sh >/dev/null
bash hack/render-tools/build.sh >/dev/null
log "ready"
