#!/usr/bin/env bash
# Build the controller image (Dockerfile) and the sample app's image (sampleapp/Dockerfile).
#
# With podman (this machine: no registry, no Docker engine): the base is the debootstrap image
# of hack/images/base.sh, imported once into podman's storage under a tag named by its cache
# key, and the render tools are the cached binaries of hack/render-tools/build.sh, given as the
# build context that replaces the Dockerfile's Go stage. Both Dockerfiles are built as they are,
# with BASE as a build argument. podman's layer cache makes a second build take seconds; a
# change to the controller's code rebuilds only its last layers.
#
# With docker (elsewhere, with an engine and a registry): the Dockerfiles' public defaults.
#
# ENGINE=podman|docker chooses; otherwise podman if installed, else docker. Arguments are passed
# to every `build` (e.g. --no-cache, for a cold build's time). Prints one line per
# image, `<name> <image id>`: the tests and the benchmark run the ids, so two builds on one
# machine (two checkouts) never run each other's images. Also tags gitops-canary:dev and
# sampleapp:dev for people.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

engine=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/hack/images/containers.conf}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
args=("$@")

if [ "$engine" = podman ]; then
  base_dir=$(bash hack/images/base.sh)
  base="localhost/gitops-canary-base:${base_dir##*/base-}"
  # One import per key, under the key's lock (the base build's own, free once it is built).
  exec 8>>"$base_dir.lock"
  flock 8
  if ! podman image exists "$base"; then
    log "importing the base image $base"
    changes=()
    while IFS= read -r line; do changes+=(--change "$line"); done <"$base_dir/CONFIG"
    podman import --quiet "${changes[@]}" "$base_dir/rootfs.tar" "$base" >/dev/null
  fi
  flock --unlock 8
  tools=$(bash hack/render-tools/build.sh)
  # Host networking: the RUN steps reach Debian's mirror and PyPI without a bridge. They trust
  # the certificate authorities this machine trusts (a TLS-inspecting egress proxy's among
  # them): the host's bundle is mounted over the base's for the RUN steps only (Debian's pip
  # reads that file too), so the images keep Debian's own bundle. Read-only: should a RUN step
  # upgrade ca-certificates (a base older than Debian's last update of it), its postinst fails
  # to replace the file; delete the base's cache folder to build a fresh base.
  args+=(--network host --build-arg "BASE=$base")
  host_cas=/etc/ssl/certs/ca-certificates.crt
  if [ -f "$host_cas" ]; then
    args+=(--volume "$host_cas:$host_cas:ro")
  fi
  controller_args=(--build-context "tools=$tools")
else
  controller_args=()
fi

build() {  # build NAME CONTEXT [ARGS...]
  local name=$1 context=$2; shift 2
  local start=$SECONDS
  log "building $name ..."
  "$engine" build --quiet "${args[@]}" "$@" --iidfile "$scratch/$name" -t "$name:dev" "$context" \
    >"$scratch/$name.log" 2>&1 || { cat "$scratch/$name.log" >&2; exit 1; }
  log "built $name in $((SECONDS - start))s"
  echo "$name $(cat "$scratch/$name")"
}

build gitops-canary . "${controller_args[@]}"
build sampleapp sampleapp
