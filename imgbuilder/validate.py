"""``image validate``: check that an image record and the store agree.

Checks, each reported as one line: the record parses and its digests are well formed;
every layer directory exists; blobs the record names (config, manifest, layer blobs) are
re-hashed when present; the config blob's ``rootfs.diff_ids`` equal the record's layers
(unless flattened); no layer directory is a leftover ``.tmp-*``.
"""

from __future__ import annotations

import hashlib
import json

from imgbuilder.images import ImageRecord, is_digest
from imgbuilder.store import Store


def _rehash(store: Store, digest: str) -> str | None:
    h = hashlib.sha256()
    with open(store.blob_path(digest), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    got = "sha256:" + h.hexdigest()
    return None if got == digest else f"blob {digest} is corrupt (content hashes to {got})"


def validate_image(store: Store, rec: ImageRecord) -> list[str]:
    """Problems found with ``rec`` (empty list: the image is sound)."""
    problems: list[str] = []
    if not rec.layers:
        problems.append("the image has no layers")
    for layer in rec.layers:
        if not is_digest(layer.diff_id):
            problems.append(f"layer diff_id {layer.diff_id!r} is not a sha256 digest")
            continue
        if not store.has_layer(layer.diff_id):
            problems.append(f"layer {layer.diff_id} is missing from {store.layers_dir}")
        if (layer.digest and is_digest(layer.digest) and store.has_blob(layer.digest)
                and (p := _rehash(store, layer.digest)) is not None):
            problems.append(p)
    for d in (rec.config_digest, rec.manifest_digest):
        if d and not is_digest(d):
            problems.append(f"digest {d!r} is not a sha256 digest")
        elif d and store.has_blob(d) and (p := _rehash(store, d)) is not None:
            problems.append(p)
    if rec.config_digest and is_digest(rec.config_digest) and store.has_blob(rec.config_digest) \
            and not rec.flattened:
        try:
            cfg = json.loads(store.blob_path(rec.config_digest).read_bytes())
            diff_ids = list((cfg.get("rootfs") or {}).get("diff_ids") or [])
            if diff_ids != [layer.diff_id for layer in rec.layers]:
                problems.append("the config's rootfs.diff_ids differ from the record's layers")
        except (ValueError, AttributeError):
            problems.append(f"config blob {rec.config_digest} is not valid JSON")
    return problems
