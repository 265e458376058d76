#!/usr/bin/env bash
# Runs one command in the image of an OCI layout, without a daemon: umoci unpacks the image into a
# runtime bundle whose config.json carries the image's user, environment and working directory,
# and runc runs it with a read-only root filesystem and no capabilities (as the chart's Pods do).
#   hack/image/run.sh build/image:0.1.0 geopin version
# The command's output and exit status are passed through.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/image/common.sh
source "$here/common.sh"

if (($# < 2)); then
  echo "usage: $0 LAYOUT:TAG COMMAND [ARG...]" >&2
  exit 2
fi
image=$1
shift
need_debian_packages umoci runc

work=$(mktemp -d "${TMPDIR:-/var/tmp}/geopin-image-run.XXXXXX")
id="geopin-image-$$-${RANDOM}"
cleanup() {
  runc --root "$work/runc" delete --force "$id" >/dev/null 2>&1 || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# raw unpack + runtime-config: the bundle umoci unpack makes, without its mtree manifest (slow).
{
  mkdir "$work/bundle" &&
    umoci raw unpack --image "$image" "$work/bundle/rootfs" &&
    umoci raw runtime-config --image "$image" --rootfs "$work/bundle/rootfs" "$work/bundle/config.json"
} >"$work/umoci.log" 2>&1 || { cat "$work/umoci.log" >&2; exit 1; }
python3 - "$work/bundle/config.json" "$@" <<'EOF'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
config = json.load(open(path))
config["process"]["args"] = args
config["process"]["terminal"] = False
config["root"]["readonly"] = True
# As the chart runs it: every capability dropped (umoci's defaults keep three).
config["process"]["capabilities"] = {k: [] for k in config["process"].get("capabilities", {})}
json.dump(config, open(path, "w"))
EOF
status=0
runc --root "$work/runc" run --bundle "$work/bundle" "$id" </dev/null || status=$?
exit "$status"
