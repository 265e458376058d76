#!/usr/bin/env bash
# Builds the control-plane binaries that a pinned wrapper module names in its `tool` block from the Go
# module proxy into a cache outside the checkout, keyed by the pins (the module's go.mod and go.sum,
# this script, the Go version). Prints the directory that holds the binaries.
#
#   hack/controlplane/build.sh                        the default control plane (this directory: 1.35)
#   hack/controlplane/build.sh hack/controlplane-1.36 a second pinned module (etcd + kube-apiserver 1.36)
#
# For the default one only, KUBEBUILDER_ASSETS set (the envtest convention) builds nothing and prints
# that directory instead.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
module=$(cd "${1:-$here}" && pwd)

if [[ -z "${1:-}" && -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  for b in etcd kube-apiserver; do
    [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || { echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no $b" >&2; exit 1; }
  done
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

cache_root=${GEOPIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/geopin}
key=$( (cat "$module/go.mod" "$module/go.sum" "$here/build.sh"; go env GOVERSION) | sha256sum | cut -c1-16)
out="$cache_root/controlplane/$key"

# One build per key at a time: a second caller waits, then finds it complete.
mkdir -p "$cache_root/controlplane"
exec 9>"$cache_root/controlplane/$key.lock"
flock 9
if [[ -f "$out/.complete" ]]; then
  echo "$out/bin"
  exit 0
fi

k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$module/go.mod")
minor=$(echo "$k8s_version" | cut -d. -f2)
version_flags="-X k8s.io/component-base/version.gitVersion=$k8s_version"
version_flags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
version_flags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"

declare -A binaries=(
  [go.etcd.io/etcd/server/v3]=etcd
  [k8s.io/kubernetes/cmd/kube-apiserver]=kube-apiserver
  [k8s.io/kubernetes/cmd/kube-controller-manager]=kube-controller-manager
  [k8s.io/kubernetes/cmd/kubectl]=kubectl
)
# The packages of the module's `tool ( ... )` block, in order.
mapfile -t tools < <(awk '/^tool \(/ {inside = 1; next} inside && /^\)/ {exit} inside {print $1}' "$module/go.mod")
mkdir -p "$out/bin"
cd "$module"
for package in "${tools[@]}"; do
  b=${binaries[$package]:?"$module/go.mod: no binary name for tool $package"}
  echo "building $b ($k8s_version pins) into $out/bin ..." >&2
  start=$SECONDS
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $version_flags" -o "$out/bin/$b" "$package"
  echo "built $b in $((SECONDS - start))s" >&2
done
touch "$out/.complete"
echo "$out/bin"
