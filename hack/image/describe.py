"""Describe the image in an OCI image layout as JSON: manifest and config digests, user, and every
layer with its compressed and uncompressed size and the Dockerfile step that made it.

    python3 hack/image/describe.py build/image [TAG]

Used by hack/image/build.sh (build/image.summary.json) and by the image tests.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def blob(layout: Path, digest: str) -> Path:
    algorithm, _, value = digest.partition(":")
    return layout / "blobs" / algorithm / value


def read_json(layout: Path, digest: str) -> Any:
    return json.loads(blob(layout, digest).read_bytes())


def uncompressed_size(path: Path, media_type: str) -> int:
    if not media_type.endswith("+gzip"):
        return path.stat().st_size
    size = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
    return size


def describe(layout: Path, tag: str | None) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    entries = index["manifests"]
    if tag is not None:
        entries = [e for e in entries if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    if len(entries) != 1:
        raise SystemExit(f"{layout}: expected one manifest{f' tagged {tag}' if tag else ''}, found {len(entries)}")
    entry = entries[0]
    manifest = read_json(layout, entry["digest"])
    config = read_json(layout, manifest["config"]["digest"])
    steps = [h.get("created_by", "") for h in config.get("history", []) if not h.get("empty_layer")]
    if len(steps) != len(manifest["layers"]):
        steps = [""] * len(manifest["layers"])
    layers = [
        {
            "digest": layer["digest"],
            "size": layer["size"],
            "diff_id": diff_id,
            "uncompressed_size": uncompressed_size(blob(layout, layer["digest"]), layer["mediaType"]),
            "created_by": step,
        }
        for layer, diff_id, step in zip(manifest["layers"], config["rootfs"]["diff_ids"], steps, strict=True)
    ]
    return {
        "reference": entry.get("annotations", {}).get("org.opencontainers.image.ref.name"),
        "manifest": entry["digest"],
        "config": manifest["config"]["digest"],
        "user": config["config"].get("User", ""),
        "entrypoint": config["config"].get("Entrypoint"),
        "cmd": config["config"].get("Cmd"),
        "labels": config["config"].get("Labels", {}),
        "layers": layers,
        "compressed_size": sum(layer["size"] for layer in layers),
        "uncompressed_size": sum(layer["uncompressed_size"] for layer in layers),
    }


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        raise SystemExit(f"usage: {argv[0]} LAYOUT [TAG]")
    summary = describe(Path(argv[1]), argv[2] if len(argv) == 3 else None)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv)
