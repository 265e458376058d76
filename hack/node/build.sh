#!/usr/bin/env bash
# Builds what a local node needs besides Debian's containerd and runc: kubelet and kube-scheduler
# from the control plane's pins (hack/controlplane/go.mod and go.sum, so they match the API
# server), and this module's geopin-pod and geopin-runc. Cached outside the checkout under its
# own key (those pins, this module, this script, the Go version), so building node binaries never
# invalidates the control plane's cache. Prints the directory that holds the binaries.
set -euo pipefail

binaries=(kubelet kube-scheduler geopin-pod geopin-runc)

if [[ -n "${GEOPIN_NODE_ASSETS:-}" ]]; then
  for b in "${binaries[@]}"; do
    [[ -x "$GEOPIN_NODE_ASSETS/$b" ]] || { echo "GEOPIN_NODE_ASSETS=$GEOPIN_NODE_ASSETS has no $b" >&2; exit 1; }
  done
  echo "$GEOPIN_NODE_ASSETS"
  exit 0
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pins="$here/../controlplane"
cache_root=${GEOPIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/geopin}
key=$( (cat "$pins/go.mod" "$pins/go.sum" "$here/build.sh" "$here/go.mod" "$here"/cmd/*/*.go; go env GOVERSION) \
  | sha256sum | cut -c1-16)
out="$cache_root/node/$key"

if [[ -f "$out/.complete" ]]; then
  echo "$out/bin"
  exit 0
fi

k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$pins/go.mod")
minor=$(echo "$k8s_version" | cut -d. -f2)
version_flags="-X k8s.io/component-base/version.gitVersion=$k8s_version"
version_flags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
version_flags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"

mkdir -p "$out/bin"
# The kubelet imports two modules that the control plane's go.sum does not list. Build from a copy of
# the pins so go may add their checksums (verified against the checksum database, as for any
# download) without touching hack/controlplane, whose files key the control plane's cache.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$pins/go.mod" "$pins/go.sum" "$work/"
build() {
  local name=$1 dir=$2 package=$3 flags=$4
  echo "building $name into $out/bin ..." >&2
  local start=$SECONDS
  (cd "$dir" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w $flags" -o "$out/bin/$name" "$package")
  echo "built $name in $((SECONDS - start))s" >&2
}
build kubelet "$work" k8s.io/kubernetes/cmd/kubelet "$version_flags"
build kube-scheduler "$work" k8s.io/kubernetes/cmd/kube-scheduler "$version_flags"
build geopin-pod "$here" ./cmd/geopin-pod ""
build geopin-runc "$here" ./cmd/geopin-runc ""
touch "$out/.complete"
echo "$out/bin"
