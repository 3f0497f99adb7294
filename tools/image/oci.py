"""An OCI image layout written from a root filesystem, byte for byte the same from the same files.

Everything that would differ between two builds is fixed: entries in sorted order, every mtime set to
the build's epoch, no user or group names, gzip without a timestamp or file name. (umoci and buildah
record the time of the build unless told otherwise; writing the few JSON documents here keeps the
whole format in view.) `skopeo` and `umoci` read the result in the tests.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
from pathlib import Path

SKIP_CONTENTS = {"dev", "proc", "sys"}  # the runtime mounts these; the image keeps the empty directories


def _entries(root: Path):
    """Every path under root, parents first, siblings sorted by name."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts and rel.parts[0] in SKIP_CONTENTS:
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield Path(dirpath) / name, rel / name


def write_layer(root: Path, out: Path, epoch: int) -> tuple[str, str, int]:
    """The root filesystem as one gzipped tar; returns (digest of the gzip, digest of the tar, size)."""
    tar_path = out.with_suffix(".tar")
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, arcname in _entries(root):
            info = tar.gettarinfo(str(path), str(arcname))
            if info is None:  # a socket: nothing a tar can hold
                continue
            info.mtime = epoch
            info.uname = info.gname = ""
            info.pax_headers = {}
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    diff_id = _sha256(tar_path)
    with open(tar_path, "rb") as src, open(out, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            while chunk := src.read(1 << 20):
                gz.write(chunk)
    tar_path.unlink()
    return _sha256(out), diff_id, out.stat().st_size


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return digest, len(data)


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_layout(layout: Path, root: Path, config: dict, tag: str, epoch: int,
                 annotations: dict[str, str]) -> dict:
    """Write root as a one-layer image tagged `tag` into the OCI layout directory `layout` (emptied
    first). Returns the manifest's digest and the image's size."""
    if layout.exists():
        for p in sorted(layout.rglob("*"), reverse=True):
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    staged = layout / "layer.tar.gz"
    layer_digest, diff_id, layer_size = write_layer(root, staged, epoch)
    staged.rename(layout / "blobs" / "sha256" / layer_digest.split(":")[1])
    config = {**config, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    config_digest, config_size = _blob(layout, _canonical(config))
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": layer_size}],
        "annotations": annotations,
    }
    manifest_digest, manifest_size = _blob(layout, _canonical(manifest))
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                            "size": manifest_size,
                            "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_bytes(_canonical(index))
    (layout / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return {"digest": manifest_digest, "layer_bytes": layer_size, "uncompressed_diff_id": diff_id}
