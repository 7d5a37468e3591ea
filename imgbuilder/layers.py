"""Adding one layer to the store: decompress → verify → extract → publish, in one pass.

This is the path every layer takes, imported or pulled: the compressed bytes are hashed
as they are read (the blob digest), the uncompressed bytes as they are decompressed (the
diff_id), the tar is extracted into a private temporary directory, and only when both
digests match what the image says is the directory renamed into ``layers/<diff_id>``.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO

from imgbuilder.compression import DecompressedStream, Readable, open_decompressed
from imgbuilder.errors import LayerError
from imgbuilder.extract import extract_layer
from imgbuilder.images import LayerRecord
from imgbuilder.store import Store

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


class HashingReader(io.RawIOBase):
    """Passes reads through and hashes every byte (sha256) and counts them."""

    def __init__(self, raw: Readable | BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self.sha256.update(data)
        self.count += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        memoryview(b)[: len(data)] = data
        return len(data)

    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def unpacked_size(path: Path) -> int:
    """Bytes of regular-file content below ``path`` (hardlinked files counted once)."""
    seen: set[int] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1:
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            if (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
    return total


def add_layer(store: Store, fileobj: Readable | BinaryIO, *, media_type: str | None = None,
              expected_digest: str | None = None, expected_diff_id: str | None = None,
              sync: bool = True) -> LayerRecord:
    """Extract the (possibly compressed) layer read from ``fileobj`` into the store.

    Guarantees: the layer becomes visible under its diff_id only after the whole stream
    was extracted and, when given, ``expected_digest`` (of the bytes read) and
    ``expected_diff_id`` (of the uncompressed tar) matched; on any error the temporary
    directory is removed and nothing is published. A layer already in the store is kept
    as is (extracting the same diff_id twice yields the same directory).
    """
    raw = HashingReader(fileobj)
    with open_decompressed(raw, media_type) as stream:
        return add_layer_stream(store, stream, raw, media_type=media_type,
                                expected_digest=expected_digest,
                                expected_diff_id=expected_diff_id, sync=sync)


def add_layer_stream(store: Store, stream: DecompressedStream, raw: HashingReader | None, *,
                     media_type: str | None = None, expected_digest: str | None = None,
                     expected_diff_id: str | None = None, sync: bool = True) -> LayerRecord:
    """:func:`add_layer` for a stream already opened with ``open_decompressed``."""
    tmp = store.new_layer_tmpdir()
    try:
        stats = extract_layer(stream, tmp)
        diff_id = stream.diff_id()
        digest = raw.digest() if raw is not None else diff_id
        if expected_digest and digest != expected_digest:
            raise LayerError(f"layer digest mismatch: expected {expected_digest}, got {digest}")
        if expected_diff_id and diff_id != expected_diff_id:
            raise LayerError(
                f"layer diff_id mismatch: the image config says {expected_diff_id}, "
                f"the layer's tar is {diff_id}")
        store.commit_layer(tmp, diff_id, sync=sync)
    except BaseException:
        store.discard_layer_tmpdir(tmp)
        raise
    kind = stream.compression
    mt = media_type or (OCI_LAYER_TAR if kind == "none" else f"{OCI_LAYER_TAR}+{kind}")
    return LayerRecord(diff_id=diff_id, digest=digest,
                       size=raw.count if raw is not None else stream.compressed_bytes,
                       media_type=mt, unpacked_size=stats.bytes)
