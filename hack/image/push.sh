#!/usr/bin/env bash
# `make image-push`: copies the image of the OCI layout that `make image` wrote to a registry, blob
# for blob (skopeo: no recompression, so the pushed manifest digest is the layout's). Prints the
# pushed reference by digest.
#
#   hack/image/push.sh REGISTRY [REPOSITORY]      e.g. hack/image/push.sh 127.0.0.1:5000 platform/geopin
#
# Environment: IMAGE_OUT (default build/image), REGISTRY_CA (a PEM file of the CA that signed the
# registry's certificate; default: the system's roots), REGISTRY_USERNAME and REGISTRY_PASSWORD
# (basic auth; default anonymous). TLS is always verified.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=hack/image/common.sh
source "$root/hack/image/common.sh"

if (($# < 1 || $# > 2)) || [[ -z $1 ]]; then
  echo "usage: $0 REGISTRY [REPOSITORY]   (make image-push REGISTRY=host:port)" >&2
  exit 2
fi
registry=$1
repository=${2:-geopin}
out=${IMAGE_OUT:-$root/build/image}
need_debian_packages skopeo
[[ -f $out/index.json ]] || { echo "image-push: no OCI layout at $out (make image)" >&2; exit 1; }
tag=$(python3 -c '
import json, sys
(m,) = json.load(open(sys.argv[1]))["manifests"]
print(m["annotations"]["org.opencontainers.image.ref.name"])' "$out/index.json")

work=$(mktemp -d "${TMPDIR:-/var/tmp}/geopin-image-push.XXXXXX")
trap 'rm -rf "$work"' EXIT
flags=(--quiet --dest-tls-verify=true --digestfile "$work/digest")
if [[ -n ${REGISTRY_CA:-} ]]; then
  # skopeo reads a directory of *.crt files as the CAs to trust for this copy.
  mkdir "$work/certs"
  cp "$REGISTRY_CA" "$work/certs/ca.crt"
  flags+=(--dest-cert-dir "$work/certs")
fi
if [[ -n ${REGISTRY_USERNAME:-} ]]; then
  # An auth file, not --dest-creds: the password stays out of the process list.
  (umask 077 && python3 - "$registry" >"$work/auth.json" <<'EOF'
import base64, json, os, sys
credentials = os.environ["REGISTRY_USERNAME"] + ":" + os.environ.get("REGISTRY_PASSWORD", "")
json.dump({"auths": {sys.argv[1]: {"auth": base64.b64encode(credentials.encode()).decode()}}}, sys.stdout)
EOF
  )
  flags+=(--dest-authfile "$work/auth.json")
fi
reference=$registry/$repository:$tag
skopeo copy "${flags[@]}" "oci:$out:$tag" "docker://$reference"
echo "$registry/$repository@$(cat "$work/digest")"
