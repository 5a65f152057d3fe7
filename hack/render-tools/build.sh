#!/usr/bin/env bash
# Build the renderers of app folders, kustomize and helm, from their Go modules, once, and cache
# them outside git. The same scheme as hack/cluster/build.sh, kept apart from it so that a bump
# here does not rebuild the cluster binaries (whose key hashes every hack/tools/*/go.mod).
#
# Each tool is a wrapper module under hack/render-tools/<tool>/ whose go.mod pins the release
# and whose go.sum pins every downloaded module's checksum (-mod=readonly: nothing unverified is
# fetched). The output folder is keyed by a hash of those files and of the build steps (this
# script from the "build steps" line on), so a version bump builds into a new folder and an
# unchanged checkout reuses the cache. Pure Go (CGO_ENABLED=0): no C compiler needed.
#
# Several runs may start at once: a complete folder is only ever read, and the build itself runs
# under an exclusive lock (flock on <key>.lock next to the folder), so one run builds while the
# others wait for it and then reuse its folder.
#
# The folder holds kustomize, helm and VERSIONS (one "<tool> <version>" line each). Prints the
# folder as its last line of stdout. With --path, prints the folder this checkout's binaries
# belong in and builds nothing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools="$repo/hack/render-tools"
cache=${GITOPS_CANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitops-canary}
log() { printf '[render-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

key=$({ sed -n '/^# --- build steps/,$p' "${BASH_SOURCE[0]}"
        cat "$tools"/*/go.mod "$tools"/*/go.sum "$tools"/*/tools.go; } \
  | sha256sum | cut -c1-16)
final="$cache/render-tools/$key"

# shellcheck source=../lib/cached-build.sh
source "$repo/hack/lib/cached-build.sh"
cached_build "$final" "${1:-}"

# --- build steps: everything from this line on is part of the cache key ---------------------
kustomize_version=$(awk '$1 == "require" && $2 == "sigs.k8s.io/kustomize/kustomize/v5" {print $3}' \
  "$tools/kustomize/go.mod")
helm_version=$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" {print $3}' "$tools/helm/go.mod")
# The Kubernetes version helm's client libraries speak (k8s.io/client-go v0.X.Y is Kubernetes 1.X).
client_go=$(awk '$1 == "k8s.io/client-go" {print $2}' "$tools/helm/go.mod")
k8s_minor=${client_go#v0.}; k8s_minor=${k8s_minor%%.*}

export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
export CGO_ENABLED=0
# Build into a scratch folder and rename it at the end: a folder named by the key is complete.
# Under the lock, a scratch folder left here is a dead build's: start it afresh.
out="$final.partial"
rm -rf "$out"
mkdir -p "$out"

build() {  # build TOOL_DIR OUTPUT LDFLAGS PACKAGE
  local dir=$1 output=$2 ldflags=$3; shift 3
  log "building $* ..."
  local start=$SECONDS
  (cd "$tools/$dir" && go build -ldflags "-s -w $ldflags" -o "$output" "$@")
  log "built $* in $((SECONDS - start))s"
}

# kustomize reads its own version from the binary's build info (its module is a dependency of
# the wrapper), so it needs no stamp.
build kustomize "$out/kustomize" "" sigs.k8s.io/kustomize/kustomize/v5

# helm stamps its version, and the Kubernetes version its lint rules and .Capabilities default
# to, through ldflags, as its own Makefile does; without them `helm version` says v3.NN only and
# charts see a wrong default KubeVersion.
hpkg=helm.sh/helm/v3
build helm "$out/helm" \
  "-X $hpkg/internal/version.version=$helm_version -X $hpkg/internal/version.gitTreeState=clean
   -X $hpkg/pkg/lint/rules.k8sVersionMajor=1 -X $hpkg/pkg/lint/rules.k8sVersionMinor=$k8s_minor
   -X $hpkg/pkg/chartutil.k8sVersionMajor=1 -X $hpkg/pkg/chartutil.k8sVersionMinor=$k8s_minor" \
  $hpkg/cmd/helm

# Each binary runs and reports the pinned version. helm gets a scratch home so that it writes
# nothing in the user's.
scratch="$out/.home"
mkdir -p "$scratch"
run() {
  env -u XDG_CACHE_HOME -u XDG_CONFIG_HOME -u XDG_DATA_HOME HOME="$scratch" \
    HELM_CACHE_HOME="$scratch/cache" HELM_CONFIG_HOME="$scratch/config" \
    HELM_DATA_HOME="$scratch/data" "$@"
}
got_kustomize=$(run "$out/kustomize" version)
got_helm=$(run "$out/helm" version --template '{{.Version}}')
rm -rf "$scratch"
if [ "$got_kustomize" != "$kustomize_version" ] || [ "$got_helm" != "$helm_version" ]; then
  echo "build.sh: built kustomize $got_kustomize and helm $got_helm," \
    "expected $kustomize_version and $helm_version" >&2
  exit 1
fi
printf 'kustomize %s\nhelm %s\n' "$got_kustomize" "$got_helm" > "$out/VERSIONS"

mv "$out" "$final"
echo "$final"
