# shellcheck shell=bash
# Sourced by hack/image/*.sh: the Debian packages the image tooling needs, and buildah on a
# throw-away store. No Docker daemon anywhere: buildah builds the Dockerfile with chroot isolation
# on the vfs storage driver (no overlay mounts, no user namespaces, no daemon), which works as root
# in a plain VM or CI container.

# shellcheck disable=SC2034 # used by the scripts that source this file
image_cache_root=${GEOPIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/geopin}

# need_debian_packages COMMAND... installs, as root, the Debian package of each command that is missing
# (the project's one list of prerequisites, hack/prereqs.sh).
need_debian_packages() {
  "$(dirname "${BASH_SOURCE[0]}")/../prereqs.sh" --only "$@"
}

# buildah_store DIR: sets BUILDAH to a buildah command line whose images and containers live in DIR
# (removed by buildah_store_remove), so that a build never sees another build's state.
buildah_store() {
  BUILDAH=(buildah --root "$1/root" --runroot "$1/run" --storage-driver vfs)
}

buildah_store_remove() {
  local dir=$1
  [[ -d $dir ]] || return 0
  "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
  "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true
  # --one-file-system: never follow a mount a failed RUN step may have left behind.
  rm -rf --one-file-system "$dir"
}
