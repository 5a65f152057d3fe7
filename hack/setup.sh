#!/usr/bin/env bash
# Install everything the tests and the demo need, idempotently, on a fresh machine:
# Debian's Prometheus, a virtualenv with the package and its test tools, the cached
# Kubernetes/etcd/kwok/fortio binaries (hack/cluster/build.sh), the cached kustomize/helm
# renderers of app folders (hack/render-tools/build.sh), and what builds and runs the images
# (tests/images): Debian's podman, runc and debootstrap, and the cached debootstrap base image
# (hack/images/base.sh). podman-compose comes with the test extras, in the virtualenv.
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

# No Docker engine runs here and no registry is reachable: the images are built by podman (with
# runc: crun fails on this machine's cgroups) from a debootstrap base. A machine with a Docker
# engine needs none of it; the image tests use that engine instead.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
    || ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing Debian's podman, runc and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman runc debootstrap >/dev/null
  elif ! docker info >/dev/null 2>&1; then
    log "no container engine and not root: the image tests will skip" \
      "(run 'sudo apt-get install podman runc debootstrap')"
  fi
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
if [ "$(id -u)" -eq 0 ] && command -v podman >/dev/null && command -v debootstrap >/dev/null; then
  bash hack/images/base.sh >/dev/null
fi
log "ready"
