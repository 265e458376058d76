#!/usr/bin/env bash
# Renders the manifest corpus that tests/unit/test_plan_corpus.py runs `geopin plan` over: every chart in
# tests/fixtures/manifests/charts with `helm template`, every kustomization in .../kustomize (an overlay
# where there is one) with `kubectl kustomize`, into tests/fixtures/manifests/rendered/.
#   hack/render-corpus.sh           write the renders
#   hack/render-corpus.sh --check   exit 1 (with a diff) when a render is out of date
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
corpus=$root/tests/fixtures/manifests
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

helm=$("$root/hack/tools/build.sh")/helm
kubectl=$("$root/hack/controlplane/build.sh")/kubectl
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for chart in "$corpus"/charts/*/; do
  name=$(basename "$chart")
  "$helm" template "$name" "$chart" --namespace apps > "$out/helm-$name.yaml"
done
while IFS= read -r kustomization; do
  dir=$(dirname "$kustomization")
  [[ -d "$dir/overlays" ]] && continue  # a base: rendered through its overlays
  name=$(realpath --relative-to="$corpus/kustomize" "$dir" | tr / -)
  "$kubectl" kustomize "$dir" > "$out/kustomize-$name.yaml"
done < <(find "$corpus/kustomize" -name kustomization.yaml | grep -v '/base/' | sort)

if $check; then
  diff -ru "$corpus/rendered" "$out" && exit 0
  echo "tests/fixtures/manifests/rendered is out of date: run hack/render-corpus.sh" >&2
  exit 1
fi
rm -rf "$corpus/rendered"
cp -r "$out" "$corpus/rendered"
ls "$corpus/rendered"
