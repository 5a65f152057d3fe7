#!/usr/bin/env bash
# Build the base image's root file system from Debian's packages, once, and cache it outside git.
#
# No registry is reachable here, so `FROM python:3.11-slim` cannot be pulled. This is the same
# thing made from Debian: debootstrap of the machine's own suite (bookworm) with Debian's
# python3.11 in a virtualenv at /opt/python that is first on PATH, so `pip` and `python` are
# what the Dockerfiles expect of python:3.11-slim (pip installs into that virtualenv: Debian
# marks its own site-packages as externally managed, PEP 668). The Dockerfiles are built
# unchanged against it (hack/images/build.sh passes it as the BASE build argument).
#
# The output is a folder keyed by a hash of the build steps (this script from the "build steps"
# line on): rootfs.tar (what `podman import` takes) and CONFIG (the image's ENV and CMD, one
# `--change` each). The same cached-folder protocol as the cluster binaries
# (hack/lib/cached-build.sh): a complete folder is only read; the build runs under a lock, and a
# run that waited for another reuses its folder.
#
# Needs root and debootstrap (hack/setup.sh installs it). Prints the folder as its last line of
# stdout; with --path, prints it and builds nothing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${GITOPS_CANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitops-canary}
log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

key=$(sed -n '/^# --- build steps/,$p' "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)
final="$cache/images/base-$key"

# shellcheck source=../lib/cached-build.sh
source "$repo/hack/lib/cached-build.sh"
cached_build "$final" "${1:-}"

# --- build steps: everything from this line on is part of the cache key ---------------------
suite=bookworm
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security
if [ "$(id -u)" -ne 0 ] || ! command -v debootstrap >/dev/null; then
  echo "base.sh: needs root and debootstrap (hack/setup.sh installs it)" >&2
  exit 1
fi

out="$final.partial"
rm -rf "$out"
mkdir -p "$out"
rootfs="$out/rootfs"
start=$SECONDS
log "debootstrap $suite (minbase) into $rootfs ..."
debootstrap --variant=minbase --components=main "$suite" "$rootfs" "$mirror" \
  >"$out/debootstrap.log" 2>&1 || { tail -20 "$out/debootstrap.log" >&2; exit 1; }

# What python:3.11-slim (and Debian's own container images) do: sources with the point-release
# and security updates, no documentation in later apt installs, no apt caches in layers.
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
cat >"$rootfs/etc/apt/apt.conf.d/slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Acquire::GzipIndexes "true";
EOF

in_root() {
  chroot "$rootfs" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}
# Python with apt rather than debootstrap's --include, whose resolver takes no virtual
# packages (python3.11-venv needs python3.11-distutils, provided by python3-distutils).
log "python3.11 and the security and point-release updates ..."
mount -t proc proc "$rootfs/proc"
trap 'umount "$rootfs/proc" 2>/dev/null || true' EXIT
in_root apt-get update -qq
in_root apt-get -y -qq upgrade >/dev/null
in_root apt-get -y -qq install python3.11 python3.11-venv ca-certificates >/dev/null
log "the virtualenv /opt/python ..."
in_root python3.11 -m venv /opt/python
umount "$rootfs/proc"
trap - EXIT

# Leave out what a container never reads: documentation, apt's lists and caches, logs.
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,info,lintian}/* "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/debconf/*-old "$rootfs"/tmp/* \
  "$rootfs"/root/.cache
find "$rootfs/var/log" -type f -delete
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
  -exec rm -rf {} +
# Fresh machine identity for each container, as in Debian's images.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"

tar --numeric-owner --xattrs -C "$rootfs" -cf "$out/rootfs.tar" .
rm -rf "$rootfs"
# The image configuration, as python:3.11-slim sets it (plus the virtualenv on PATH).
cat >"$out/CONFIG" <<'EOF'
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV LANG=C.UTF-8
ENV PYTHON_VERSION=3.11
CMD ["python3"]
EOF
log "base rootfs built in $((SECONDS - start))s ($(du -h "$out/rootfs.tar" | cut -f1))"
mv "$out" "$final"
echo "$final"
