#!/usr/bin/env bash
# Writes a CycloneDX (JSON) SBOM of the Python environment inside an image of an OCI layout:
# every distribution installed in the image's /opt/geopin venv, with versions, licences, hashes
# and package URLs, as cyclonedx-py (the CycloneDX project's Python tool) reads them.
#   hack/image/sbom.sh build/image:0.1.0 build/image.sbom.json [SOURCE_DATE_EPOCH]
#
# cyclonedx-py reads an environment through its interpreter's sys.path. The image's interpreter
# is a symlink to the image's /usr/bin/python3.11, so the host cannot run it as is: a throw-away
# venv whose site-packages is the image's own gives the tool exactly the image's distributions.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=hack/image/common.sh
source "$here/common.sh"

if (($# < 2)); then
  echo "usage: $0 LAYOUT:TAG OUTPUT [SOURCE_DATE_EPOCH]" >&2
  exit 2
fi
image=$1
output=$2
epoch=${3:-${SOURCE_DATE_EPOCH:-}}
venv_bin=${VENV_BIN:-$root/.venv/bin}
need_debian_packages umoci
[[ -x $venv_bin/cyclonedx-py ]] || { echo "sbom: no $venv_bin/cyclonedx-py (make venv)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/geopin-image-sbom.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
umoci raw unpack --image "$image" "$work/rootfs" >"$work/umoci.log" 2>&1 || { cat "$work/umoci.log" >&2; exit 1; }
site=$(echo "$work"/rootfs/opt/geopin/lib/python3.*/site-packages)
[[ -d $site ]] || { echo "sbom: the image has no /opt/geopin/lib/python3.*/site-packages" >&2; exit 1; }

python=$("$venv_bin/python" -c 'import sys; print(sys._base_executable)')
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
view=$work/view
mkdir -p "$view/bin" "$view/lib/python$pyver"
ln -s "$python" "$view/bin/python"
ln -s "$site" "$view/lib/python$pyver/site-packages"
printf 'home = %s\ninclude-system-site-packages = false\n' "$(dirname "$python")" >"$view/pyvenv.cfg"

env ${epoch:+SOURCE_DATE_EPOCH=$epoch} "$venv_bin/cyclonedx-py" environment --output-reproducible --validate \
  --output-format JSON \
  --output-file "$output" "$view/bin/python"
# The SBOM describes the image: its root component is the container, by manifest digest (package
# URL type "oci"), which contains the geopin distribution and, through it, everything else.
python3 - "$output" "${image%:*}" "${image##*:}" <<'EOF'
import json, sys
from pathlib import Path
output, layout, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
blob = lambda digest: json.loads((layout / "blobs" / digest.replace(":", "/", 1)).read_bytes())
(entry,) = [m for m in json.loads((layout / "index.json").read_text())["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
labels = blob(blob(entry["digest"])["config"]["digest"])["config"].get("Labels", {})
bom = json.loads(output.read_text())
(geopin,) = [c["bom-ref"] for c in bom["components"] if c["name"] == "geopin"]
bom["metadata"]["component"] = {
    "bom-ref": "image",
    "type": "container",
    "name": "geopin",
    "version": tag,
    "purl": f"pkg:oci/geopin@{entry['digest'].replace(':', '%3A')}?tag={tag}",
    "hashes": [{"alg": "SHA-256", "content": entry["digest"].removeprefix("sha256:")}],
    "properties": [{"name": f"oci:label:{k}", "value": v} for k, v in sorted(labels.items())],
}
bom["dependencies"].append({"ref": "image", "dependsOn": [geopin]})
output.write_text(json.dumps(bom, indent=2) + "\n")
EOF
echo "image: SBOM $output ($(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["components"]))' "$output") components)" >&2
