#!/usr/bin/env bash
# Builds helm and kubeconform from the Go module proxy into a cache outside the checkout, keyed by
# the pins (go.mod, go.sum, this script, the Go version), in the style of hack/controlplane/build.sh.
# Prints the directory that holds the binaries.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${GEOPIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/geopin}
key=$( (cat "$here/go.mod" "$here/go.sum" "$here/build.sh"; go env GOVERSION) | sha256sum | cut -c1-16)
out="$cache_root/tools/$key"

if [[ -f "$out/.complete" ]]; then
  echo "$out/bin"
  exit 0
fi

cd "$here"
pin() { awk -v m="$1" '$1 == m {print $2; exit}' go.mod; }
helm_version=$(pin helm.sh/helm/v3)
kubeconform_version=$(pin github.com/yannh/kubeconform)
# helm derives its default .Capabilities.KubeVersion from the client-go it is built with (as its Makefile does).
client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go)
k8s_major=$(($(echo "${client_go#v}" | cut -d. -f1) + 1))
k8s_minor=$(echo "$client_go" | cut -d. -f2)
helm_flags="-X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_flags+=" -X $p.k8sVersionMajor=$k8s_major -X $p.k8sVersionMinor=$k8s_minor"
done
kubeconform_flags="-X main.version=$kubeconform_version"

mkdir -p "$out/bin"
declare -A packages=(
  [helm]=helm.sh/helm/v3/cmd/helm
  [kubeconform]=github.com/yannh/kubeconform/cmd/kubeconform
)
declare -A flags=([helm]=$helm_flags [kubeconform]=$kubeconform_flags)
for b in helm kubeconform; do
  echo "building $b into $out/bin ..." >&2
  start=$SECONDS
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w ${flags[$b]}" -o "$out/bin/$b" "${packages[$b]}"
  echo "built $b in $((SECONDS - start))s" >&2
done
touch "$out/.complete"
echo "$out/bin"
