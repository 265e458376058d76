#!/usr/bin/env bash
# Builds the Python base image for local image builds from Debian bookworm packages (its python3.11
# is the same CPython minor as the official python:3.11-slim-bookworm the Dockerfile names), with
# mmdebstrap, into an OCI image layout in a cache outside the checkout, keyed by this script (which
# holds every input: suite, packages, excludes). Prints the layout's directory; the image in it is
# tagged "base". Docker Hub cannot be reached here; real builds keep the official base.
#
# The Debian archive moves on (security updates); the cached base does not. To take them:
#   rm -rf ~/.cache/geopin/image-base && make image
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/image/common.sh
source "$here/common.sh"

suite=bookworm
mirror=${IMAGE_BASE_MIRROR:-http://deb.debian.org/debian}
security_mirror=${IMAGE_BASE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# What the Dockerfile's build stage needs (python, python -m venv with pip) and what the operator
# needs at run time (TLS roots). "essential" adds only Debian's Essential:yes packages: no apt.
packages=python3.11,python3.11-venv,python-is-python3,ca-certificates
# A fixed time for every file and the image's history: two cold builds from the same archive state
# give the same layer. Bookworm's release day.
epoch=1686355200

arch=$(dpkg --print-architecture)
key=$( (cat "$here/base.sh"; echo "$arch") | sha256sum | cut -c1-16)
out="$image_cache_root/image-base/$key"

if [[ -f "$out/.complete" ]]; then
  echo "$out/oci"
  exit 0
fi

# One build per key at a time: a second caller waits, then finds it complete.
mkdir -p "$image_cache_root/image-base"
exec 9>"$image_cache_root/image-base/$key.lock"
flock 9
if [[ -f "$out/.complete" ]]; then
  echo "$out/oci"
  exit 0
fi

need_debian_packages mmdebstrap buildah
start=$SECONDS
echo "image: building the python3.11 base from Debian $suite into $out ..." >&2
work=$(mktemp -d "${TMPDIR:-/var/tmp}/geopin-image-base.XXXXXX")
buildah_store "$work/store"
trap 'buildah_store_remove "$work/store"; rm -rf --one-file-system "$work"' EXIT

# merged-usr hook: the /usr merge by symlinks, without the usrmerge package (and the perl it pulls).
# path-exclude: documentation, manuals and translations (copyright files stay).
SOURCE_DATE_EPOCH=$epoch mmdebstrap --quiet --mode=root --variant=essential --format=tar \
  --architectures="$arch" \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook='rm -f "$1"/var/log/*.log "$1"/var/lib/dpkg/*-old "$1"/var/cache/debconf/*-old' \
  "$suite" "$work/rootfs.tar" \
  "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security_mirror $suite-security main" \
  >"$work/mmdebstrap.log" 2>&1 || { cat "$work/mmdebstrap.log" >&2; exit 1; }

container=$("${BUILDAH[@]}" from scratch)
rootfs=$("${BUILDAH[@]}" mount "$container")
tar -xf "$work/rootfs.tar" -C "$rootfs" --numeric-owner
dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f '${Package} ${Version}\n' >"$work/packages.txt"
"${BUILDAH[@]}" umount "$container" >/dev/null
"${BUILDAH[@]}" config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
  --cmd python3 "$container"
rm -rf "$out"
mkdir -p "$out"
"${BUILDAH[@]}" commit --quiet --identity-label=false --timestamp "$epoch" "$container" "oci:$out/oci:base" >/dev/null
mv "$work/packages.txt" "$out/packages.txt"
touch "$out/.complete"
echo "image: base built in $((SECONDS - start))s" >&2
echo "$out/oci"
