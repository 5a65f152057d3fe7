#!/usr/bin/env bash
# Build the local cluster's binaries from their Go modules, once, and cache them outside git.
#
# Each tool is a wrapper module under hack/tools/<tool>/ whose go.mod pins the release and
# whose go.sum pins every downloaded module's checksum (-mod=readonly: nothing unverified is
# fetched). The output folder is keyed by a hash of those files and of the build steps (this
# script from the "build steps" line on), so a version bump builds into a new folder and an
# unchanged checkout reuses the cache.
#
# Several runs may start at once (two `hack/test` on one machine): a complete folder is only
# ever read, and the build itself runs under an exclusive lock (flock on <key>.lock next to the
# folder), so one run builds while the others wait for it and then reuse its folder.
#
# Prints the folder holding the binaries as its last line of stdout. With --path, prints the
# folder this checkout's binaries belong in and builds nothing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools="$repo/hack/tools"
cache=${GITOPS_CANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitops-canary}
log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

key=$({ sed -n '/^# --- build steps/,$p' "${BASH_SOURCE[0]}"
        cat "$tools"/*/go.mod "$tools"/*/go.sum "$tools"/*/tools.go "$tools"/*/*.patch; } \
  | sha256sum | cut -c1-16)
final="$cache/bin/$key"

# shellcheck source=../lib/cached-build.sh
source "$repo/hack/lib/cached-build.sh"
cached_build "$final" "${1:-}"

# --- build steps: everything from this line on is part of the cache key ---------------------
kube_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$tools/kube/go.mod")
gitea_version=$(awk '$1 == "require" && $2 == "code.gitea.io/gitea" {print $3}' "$tools/gitea/go.mod")

export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
export CGO_ENABLED=0
# Gitea's SQLite driver is cgo (see below): fail now rather than after building Kubernetes.
if ! command -v "${CC:-gcc}" >/dev/null; then
  echo "build.sh: gitea needs a C compiler for SQLite (cgo): apt-get install gcc" >&2
  exit 1
fi
# Build into a scratch folder and rename it at the end: a folder named by the key is complete.
# Under the lock, a scratch folder left here is a dead build's: start it afresh.
out="$final.partial"
rm -rf "$out"
mkdir -p "$out"

# Kubernetes stamps its version through ldflags, as its own build (hack/lib/version.sh) does;
# without it /version reports v0.0.0-master and the apiserver's compatibility checks misbehave.
minor=${kube_version#v1.}; minor=${minor%%.*}
vpkg=k8s.io/component-base/version
cpkg=k8s.io/client-go/pkg/version
stamp=""
for p in $vpkg $cpkg; do
  stamp+=" -X $p.gitVersion=$kube_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  stamp+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

# One local patch: kube-apiserver rejects loopback endpoint addresses, and the local cluster's
# pods live on 127.x because this sandbox allows traffic to loopback only. The verified module
# is copied out of the module cache, patched (loopback-endpoints.patch), and built through a
# generated -modfile that replaces k8s.io/kubernetes with the copy; go.sum still verifies the rest.
kube_src=$(cd "$tools/kube" && go mod download -json k8s.io/kubernetes | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
patched="$out/src/kubernetes"
rm -rf "$out/src"
mkdir -p "$out/src"
cp -r "$kube_src" "$patched"
chmod -R u+w "$patched"
patch --quiet -p1 -d "$patched" < "$tools/kube/loopback-endpoints.patch"
{ cat "$tools/kube/go.mod"; printf '\nreplace k8s.io/kubernetes => %s\n' "$patched"; } > "$out/src/go.mod"
cp "$tools/kube/go.sum" "$out/src/go.sum"

build() {  # build TOOL_DIR OUTPUT LDFLAGS PACKAGE... (OUTPUT: a file for one package, a folder/ for several)
  local dir=$1 output=$2 ldflags=$3; shift 3
  log "building $* ..."
  local start=$SECONDS
  (cd "$tools/$dir" && go build ${modfile:-} ${tags:+-tags "$tags"} -ldflags "-s -w $ldflags" \
    -o "$output" "$@")
  log "built $* in $((SECONDS - start))s"
}

build etcd "$out/etcd" "" go.etcd.io/etcd/server/v3
modfile="-modfile=$out/src/go.mod" build kube "$out/" "$stamp" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl
build kwok "$out/kwok" "" sigs.k8s.io/kwok/cmd/kwok
build fortio "$out/fortio" "" fortio.org/fortio

# Gitea, the forge of the commit-status tests. v1.26 reaches SQLite only through mattn/go-sqlite3,
# which is cgo: this one build has CGO_ENABLED=1 (gcc needed) and Gitea's own tags, CFLAGS and
# version stamp (its Makefile). Without the bindata tag Gitea reads options/ (locales, gitignore,
# licence and label files), templates/ and public/ from STATIC_ROOT_PATH at run time: they are
# copied from the same verified module next to the binary (hack/localcluster/gitea.py).
gitea_tags="sqlite sqlite_unlock_notify"
CGO_ENABLED=1 CGO_CFLAGS="$(go env CGO_CFLAGS) -DSQLITE_MAX_VARIABLE_NUMBER=32766" \
  tags="$gitea_tags" build gitea "$out/gitea" \
  "-X main.Version=${gitea_version#v} -X 'main.Tags=$gitea_tags'" code.gitea.io/gitea
gitea_src=$(cd "$tools/gitea" && go mod download -json code.gitea.io/gitea \
  | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
mkdir -p "$out/gitea-static"
cp -r "$gitea_src/options" "$gitea_src/templates" "$gitea_src/public" "$out/gitea-static/"
chmod -R u+w "$out/gitea-static"
rm -rf "$out/src"

# kwok's own stage definitions (node-fast, node heartbeat with lease, pod-fast), taken from the
# verified module so they always match the kwok binary.
kwok_src=$(cd "$tools/kwok" && go mod download -json sigs.k8s.io/kwok | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
             pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
  printf -- '---\n'
  cat "$kwok_src/kustomize/stage/$stage.yaml"
done > "$out/kwok-stages.yaml"

mv "$out" "$final"
echo "$final"
