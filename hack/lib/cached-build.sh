# Sourced by hack/cluster/build.sh and hack/render-tools/build.sh: the cached-folder protocol.
#
# cached_build FINAL [--path]: print FINAL and exit when it is only asked for (--path) or
# already built (a folder named by its key is complete: it appears by a rename at the very end
# of a build). Otherwise take the exclusive lock FINAL.lock, held until the script exits however
# it exits, waiting for a concurrent build of the same key and reusing its folder if it made
# one; then return, and the caller builds. Expects a `log` function.
cached_build() {
  local final=$1 mode=${2:-}
  if [ "$mode" = --path ] || [ -d "$final" ]; then
    echo "$final"
    exit 0
  fi
  mkdir -p "$(dirname "$final")"
  exec 9>>"$final.lock"
  if ! flock --nonblock 9; then
    log "another build of $(basename "$final") is running: waiting for it"
    flock 9
  fi
  if [ -d "$final" ]; then  # the build we waited for finished it
    echo "$final"
    exit 0
  fi
}
