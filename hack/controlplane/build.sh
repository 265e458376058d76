#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from the Go module proxy
# into a cache outside the checkout, keyed by the pins (go.mod, go.sum, this script, the Go version).
# Prints the directory that holds the binaries. With KUBEBUILDER_ASSETS set (the envtest
# convention) it builds nothing and prints that directory instead.
set -euo pipefail

binaries=(etcd kube-apiserver kube-controller-manager kubectl)

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  for b in etcd kube-apiserver; do
    [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || { echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no $b" >&2; exit 1; }
  done
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${GEOPIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/geopin}
key=$( (cat "$here/go.mod" "$here/go.sum" "$here/build.sh"; go env GOVERSION) | sha256sum | cut -c1-16)
out="$cache_root/controlplane/$key"

if [[ -f "$out/.complete" ]]; then
  echo "$out/bin"
  exit 0
fi

k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")
minor=$(echo "$k8s_version" | cut -d. -f2)
version_flags="-X k8s.io/component-base/version.gitVersion=$k8s_version"
version_flags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
version_flags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"

mkdir -p "$out/bin"
cd "$here"
declare -A packages=(
  [etcd]=go.etcd.io/etcd/server/v3
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
)
for b in "${binaries[@]}"; do
  echo "building $b ($k8s_version pins) into $out/bin ..." >&2
  start=$SECONDS
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $version_flags" -o "$out/bin/$b" "${packages[$b]}"
  echo "built $b in $((SECONDS - start))s" >&2
done
touch "$out/.complete"
echo "$out/bin"
