#!/usr/bin/env bash
# `make image`: builds the repository's Dockerfile without a Docker daemon (buildah, chroot
# isolation, vfs storage) into an OCI image layout, checks that the image runs, and writes its SBOM.
#
#   build/image/                 OCI image layout (index.json, blobs/), tagged with geopin's version
#   build/image.summary.json     manifest and config digests, user, layers with sizes (describe.py)
#   build/image.sbom.json        CycloneDX SBOM of the image's Python environment (cyclonedx-py)
#
# Reproducible: every time in the image (file times, history, the created label) is the commit's
# time (SOURCE_DATE_EPOCH), so two builds of one commit give the same layer and manifest digests.
# The base is the Dockerfile's official python image when IMAGE_BASE names it and it can be pulled;
# by default it is built here from Debian's python3.11 (hack/image/base.sh, cached).
#
# Environment: IMAGE_OUT (default build/image), IMAGE_BASE (a PYTHON_IMAGE to pull instead of the
# Debian-built base), IMAGE_BUILD_CA (a CA bundle that pip inside the build must trust; default the
# host's, so that a TLS-intercepting proxy the host trusts works in the build too).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$root/hack/image
# shellcheck source=hack/image/common.sh
source "$here/common.sh"
cd "$root"
start=$SECONDS

need_debian_packages buildah skopeo umoci runc mmdebstrap
out=${IMAGE_OUT:-$root/build/image}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' operator/geopin/__init__.py)
[[ -n $version ]] || { echo "image: no __version__ in operator/geopin/__init__.py" >&2; exit 1; }
revision=$(git rev-parse HEAD)
context=(Dockerfile .dockerignore pyproject.toml README.md requirements operator)
if [[ -n $(git status --porcelain -- "${context[@]}") ]]; then
  revision+="-dirty"
  echo "image: the build context has uncommitted changes; the image is not the commit's" >&2
fi
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
tag=$version

work=$(mktemp -d "${TMPDIR:-/var/tmp}/geopin-image.XXXXXX")
buildah_store "$work/store"
trap 'buildah_store_remove "$work/store"; rm -rf --one-file-system "$work"' EXIT

if [[ -n ${IMAGE_BASE:-} ]]; then
  base_ref=$IMAGE_BASE
else
  base_layout=$("$here/base.sh")
  base_ref=localhost/geopin-python:3.11-bookworm
  skopeo copy --quiet "oci:$base_layout:base" "containers-storage:[vfs@$work/store/root+$work/store/run]$base_ref"
fi

mounts=()
ca=${IMAGE_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
# Over the base's bundle, in RUN steps only: a bind mount never reaches a layer.
[[ -n $ca && -f $ca ]] && mounts+=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro")

echo "image: building geopin:$tag from $base_ref (revision $revision, created $created) ..." >&2
build_start=$SECONDS
"${BUILDAH[@]}" build --isolation chroot --pull=never --format oci --identity-label=false \
  --timestamp "$epoch" \
  --build-arg "PYTHON_IMAGE=$base_ref" --build-arg "VERSION=$version" \
  --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
  "${mounts[@]}" --tag "localhost/geopin:$tag" --file Dockerfile . >"$work/build.log" 2>&1 ||
  { cat "$work/build.log" >&2; exit 1; }
echo "image: built in $((SECONDS - build_start))s" >&2

rm -rf "$out"
mkdir -p "$(dirname "$out")"
"${BUILDAH[@]}" push --quiet "localhost/geopin:$tag" "oci:$out:$tag"
python3 "$here/describe.py" "$out" "$tag" >"$out.summary.json"

# The image runs: the Dockerfile's user, not root, and geopin answers.
user=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["user"])' "$out.summary.json")
[[ $user == 65532:65532 ]] || { echo "image: runs as '$user', want 65532:65532" >&2; exit 1; }
smoke=$("$here/run.sh" "$out:$tag" sh -c 'id -u; id -g; geopin version' | tr '\n' ' ')
[[ $smoke == "65532 65532 geopin $version " ]] || { echo "image: smoke run printed '$smoke'" >&2; exit 1; }
echo "image: runs as uid/gid 65532: geopin version -> geopin $version" >&2

"$here/sbom.sh" "$out:$tag" "$out.sbom.json" "$epoch"

python3 - "$out.summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
mib = 1 << 20
print(f"image: {sys.argv[1].removesuffix('.summary.json')}:{s['reference']} manifest {s['manifest']}")
print(f"image: {len(s['layers'])} layers, {s['compressed_size'] / mib:.1f} MiB compressed, "
      f"{s['uncompressed_size'] / mib:.1f} MiB uncompressed")
for layer in s["layers"]:
    print(f"image:   {layer['digest']}  {layer['size'] / mib:6.1f} MiB  ({layer['uncompressed_size'] / mib:.1f} MiB)")
EOF
echo "image: done in $((SECONDS - start))s" >&2
