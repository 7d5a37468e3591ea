"""Pull an image from a registry into the layer store, one streaming pipeline per layer.

For each layer not yet in the store (by diff_id), in a bounded thread pool::

    network ──▶ blobs/partial/<hex> (append) ──▶ sha256(blob)
                     │
                     └──▶ decompress (gzip | zstd | none) ──▶ sha256(diff_id) ──▶ untar
                                                                   into layers/.tmp-*/

A fetcher thread reads the network (and first re-reads any bytes a killed pull left in
``blobs/partial/``), appends to the partial file and hashes, while the calling thread
decompresses and extracts: the two overlap, and no full copy of the layer is ever needed
before extraction starts.

Guarantees:

- nothing from an unverified blob becomes visible: the layer directory is renamed into
  place (``commit_layer``) only after BOTH the blob's sha256/size and the diff_id from the
  config's ``rootfs.diff_ids`` matched; on any mismatch the temporary directory and the
  partial blob are deleted and :class:`~registry.errors.DigestMismatchError` is raised;
- kill -9 at any point leaves no half layer visible (only ``layers/.tmp-*``, which the
  store clears) and keeps the downloaded bytes in ``blobs/partial/``; the next pull feeds
  them through the pipeline again and continues from the network with HTTP Range;
- two pulls (threads or processes) that need the same layer serialize on an flock of its
  partial file; the second finds the layer committed and skips it; ``commit_layer``
  tolerates a loser that extracted the same diff_id from another blob;
- the image record is written last, so a name never points at missing layers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgbuilder.compression import open_decompressed
from imgbuilder.errors import ImageError, StoreError
from imgbuilder.extract import extract_layer
from imgbuilder.flatten import flatten_image, max_layers
from imgbuilder.fscheck import check_layer_filesystem
from imgbuilder.images import ImageRecord, LayerRecord
from imgbuilder.pull_source import (
    READ_SIZE,
    BlobSource,
    Cancelled,
    DiffIdReader,
    LocalBlob,
    open_locked_partial,
)
from imgbuilder.store import Store
from registry.client import RegistryClient, RegistryConfig, ResolvedImage
from registry.errors import DigestMismatchError, RegistryError
from registry.manifest import Descriptor
from registry.reference import Reference, parse_reference

#: overlayfs stacks at most 500 lowerdirs and the mount options must fit one page
#: (``flatten.max_layers`` computes that for the store's path); images with more layers
#: than this, or than that, are flattened into one directory.
MAX_OVERLAY_LAYERS = 100
RUN_CONFIG_KEYS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "Labels", "ExposedPorts",
                   "StopSignal", "Volumes")


@dataclass(frozen=True)
class PullEvent:
    """Progress of a pull. ``kind``: resolved, layer_skipped, layer_started, layer_progress,
    layer_done, done. Byte counts are of the compressed blob; ``resumed`` of them came from
    a previous, interrupted pull."""

    kind: str
    digest: str = ""
    total: int = 0
    done: int = 0
    resumed: int = 0
    message: str = ""


ProgressFn = Callable[[PullEvent], None]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- one layer ------------------------------------------------------------------------------


def _space_error(store: Store, e: OSError) -> StoreError:
    return StoreError(
        f"no space left on the device holding {store.data_dir}",
        hint="free some space (sandkasten image prune removes unused layers) and pull again; "
        "downloaded bytes are kept",
    )


class _LayerJob:
    def __init__(
        self,
        store: Store,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        diff_id: str,
        emit: ProgressFn,
        cancel: threading.Event,
        sync: bool = True,
    ) -> None:
        self.store, self.client, self.ref, self.desc = store, client, ref, desc
        self.diff_id, self.emit, self.cancel = diff_id, emit, cancel
        self.sync = sync
        self.unpacked_size: int | None = None

    def run(self) -> None:
        try:
            self._run(retry_fresh=True)
        except (RegistryError, Cancelled):
            raise
        except Exception as e:
            # ENOSPC may surface from the download or from extraction, possibly wrapped.
            cause: BaseException | None = e
            while cause is not None:
                if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
                    raise _space_error(self.store, cause) from None
                cause = cause.__cause__ or cause.__context__
            if isinstance(e, OSError):
                raise StoreError(f"cannot write to {self.store.data_dir}: {e}") from None
            raise

    def _run(self, *, retry_fresh: bool) -> None:
        store, desc = self.store, self.desc
        if store.has_layer(self.diff_id):
            self.emit(PullEvent("layer_skipped", desc.digest, desc.size, desc.size))
            return
        fh = open_locked_partial(store, desc.digest)
        partial = store.partial_blob_path(desc.digest)
        try:
            # Another pull may have committed this layer while we waited for the lock;
            # then the partial file is the empty one we just created: remove it (we hold
            # its lock, and any later waiter notices the unlinked inode and reopens).
            done_elsewhere = store.has_layer(self.diff_id) or store.has_blob(desc.digest)
            if done_elsewhere and os.fstat(fh.fileno()).st_size == 0:
                partial.unlink(missing_ok=True)
            if store.has_layer(self.diff_id):
                self.emit(PullEvent("layer_skipped", desc.digest, desc.size, desc.size))
                return
            if store.has_blob(desc.digest):
                # Crashed between commit_blob and commit_layer: the verified blob is
                # local; extract from it (verified again on the way) instead of the network.
                with open(store.blob_path(desc.digest), "rb") as local:
                    self._extract(LocalBlob(local, desc, self._progress_fn(0)), partial=None)
                return
            have = os.fstat(fh.fileno()).st_size
            if have > desc.size:
                fh.truncate(0)
                have = 0
            self.emit(PullEvent("layer_started", desc.digest, desc.size, 0, have))

            def chunks(offset: int, hasher: Any) -> Iterator[bytes]:
                return self.client.stream_blob(self.ref, desc, offset, hasher=hasher)

            source = BlobSource(fh, have, chunks, self._progress_fn(0), threading.Event())
            try:
                self._extract(source, partial=partial)
            except DigestMismatchError:
                # Bytes on disk or from the network were wrong: never keep them. If they
                # were resumed from an earlier run, that prefix may be the culprit: retry
                # once from byte 0.
                partial.unlink(missing_ok=True)
                if have and retry_fresh:
                    fh.close()
                    return self._run(retry_fresh=False)
                raise
            finally:
                source.stop()
        finally:
            fh.close()

    def _progress_fn(self, start: int) -> Callable[[int], None]:
        done = [start]
        desc = self.desc

        def on_bytes(n: int) -> None:
            done[0] += n
            if self.cancel.is_set():
                raise Cancelled
            self.emit(PullEvent("layer_progress", desc.digest, desc.size, done[0]))

        return on_bytes

    def _extract(self, source: Any, *, partial: Path | None) -> None:
        store, desc = self.store, self.desc
        tmpdir = store.new_layer_tmpdir()
        try:
            stream: Any = None
            try:
                stream = open_decompressed(source, desc.media_type)
                # The decompressor may hash what it delivers (one pass less over the
                # uncompressed bytes); otherwise hash here.
                own_hash = not callable(getattr(stream, "diff_id", None))
                tar: Any = DiffIdReader(stream) if own_hash else stream
                stats = extract_layer(tar, tmpdir)
                while tar.read(READ_SIZE):  # end-of-archive padding belongs to the diff_id
                    pass
                diff_id = tar.digest if own_hash else stream.diff_id()
            except (RegistryError, Cancelled, OSError):
                raise
            except Exception:
                # Undecompressable or unextractable content. Blame the transfer if the blob
                # does not match its digest (read to EOF to know); else the layer itself is
                # bad, and that error stands. Either way nothing is kept.
                stream, closing = None, stream
                if closing is not None:
                    closing.close()  # stop the decompressor before draining its source
                if partial is not None:
                    try:
                        source.drain()
                    finally:
                        partial.unlink(missing_ok=True)
                raise
            finally:
                if stream is not None:
                    stream.close()  # stops a decompressor thread before we touch source
            source.drain()  # EOF of the blob: stream_blob has now checked size and sha256
            if diff_id != self.diff_id:
                if partial is not None:
                    partial.unlink(missing_ok=True)
                raise DigestMismatchError(
                    f"layer {desc.digest[:19]} of {self.ref.name}: uncompressed content "
                    f"{diff_id[:19]} does not match the config's diff_id {self.diff_id[:19]}",
                    hint="the image is corrupt on the registry; nothing was stored",
                )
            if partial is not None:
                store.commit_blob(partial, desc.digest)
            store.commit_layer(tmpdir, self.diff_id, sync=self.sync)
        except BaseException:
            store.discard_layer_tmpdir(tmpdir)
            raise
        size = getattr(stats, "unpacked_size", None) or getattr(stats, "bytes", None)
        self.unpacked_size = int(size) if size is not None else None
        self.emit(PullEvent("layer_done", desc.digest, desc.size, desc.size))


# -- the image ------------------------------------------------------------------------------


def _store_bytes(store: Store, data: bytes, digest: str) -> None:
    """Keep a manifest/config/index in blobs/ (verified by the registry client)."""
    if store.has_blob(digest):
        return
    tmp = store.partial_blob_path(digest)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp.with_name(f"{tmp.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_bytes(data)
    store.commit_blob(tmp, digest)


def _known_unpacked_sizes(store: Store) -> dict[str, int]:
    sizes: dict[str, int] = {}
    try:
        for rec in store.list_images():
            for layer in rec.layers:
                if layer.unpacked_size:
                    sizes[layer.diff_id] = layer.unpacked_size
    except ImageError:
        pass
    return sizes


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def pull_image(
    store: Store,
    ref: str | Reference,
    *,
    name: str | None = None,
    platform: str | None = None,
    flatten: bool = False,
    registry_settings: RegistryConfig | None = None,
    progress: ProgressFn | None = None,
    max_concurrency: int = 4,
    client: RegistryClient | None = None,
    sync: bool = True,
) -> ImageRecord:
    """Pull ``ref`` into ``store`` under ``name`` (default: the repository's last component).

    Downloads only the layers the store lacks, at most ``max_concurrency`` at a time, and
    writes the image record last. With ``sync`` (the default) each layer is flushed to
    disk (syncfs) before it is published, so it survives a power loss; without, it still
    survives a crash or kill -9. Raises :class:`~registry.errors.RegistryError` or
    :class:`~imgbuilder.errors.ImageError` subclasses, each with a one-line message.
    """
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    name = name or reference.last_component
    emit: ProgressFn = progress or (lambda _e: None)
    check_layer_filesystem(store.layers_dir)
    own_client = client is None
    rc = client or RegistryClient(registry_settings or RegistryConfig())
    try:
        with store.shared_lock():
            resolved = rc.resolve(reference, platform)
            emit(PullEvent("resolved", resolved.manifest_digest,
                           sum(d.size for d in resolved.manifest.layers),
                           message=str(resolved.platform)))
            try:
                if resolved.index_bytes and resolved.index_digest:
                    _store_bytes(store, resolved.index_bytes, resolved.index_digest)
                _store_bytes(store, resolved.manifest_bytes, resolved.manifest_digest)
                _store_bytes(store, resolved.config_bytes, resolved.manifest.config.digest)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise _space_error(store, e) from None
                raise StoreError(f"cannot write to {store.data_dir}: {e}") from None
            sizes = _run_layers(store, rc, resolved, emit, max_concurrency, sync)
            rec = _record(name, resolved, sizes)
            if flatten or len(rec.layers) > min(MAX_OVERLAY_LAYERS, max_layers(store)):
                rec = flatten_image(store, rec, sync=sync)
            store.write_image(rec)
    finally:
        if own_client:
            rc.close()
    emit(PullEvent("done", resolved.manifest_digest, message=name))
    return rec


def _run_layers(
    store: Store,
    rc: RegistryClient,
    resolved: ResolvedImage,
    emit: ProgressFn,
    max_concurrency: int,
    sync: bool = True,
) -> dict[str, int]:
    """Fetch and extract every missing layer; returns diff_id → unpacked size."""
    cancel = threading.Event()
    pairs = list(zip(resolved.manifest.layers, resolved.config.diff_ids, strict=True))
    unique: dict[str, Descriptor] = {}
    for desc, diff_id in pairs:
        unique.setdefault(diff_id, desc)  # the same layer twice in one image: fetch once
    jobs = [_LayerJob(store, rc, resolved.reference, d, diff_id, emit, cancel, sync)
            for diff_id, d in unique.items()]
    with ThreadPoolExecutor(max_workers=max(1, max_concurrency),
                            thread_name_prefix="pull-layer") as pool:
        futures = [pool.submit(job.run) for job in jobs]
        done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in done if f.exception() is not None]
        if errors:
            cancel.set()  # the other layers stop at their next chunk; their bytes are kept
            for f in futures:
                f.cancel()
            wait(futures)
            first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
            assert first is not None
            raise first
    sizes = _known_unpacked_sizes(store)
    for job in jobs:
        if job.unpacked_size is not None:
            sizes[job.diff_id] = job.unpacked_size
        elif job.diff_id not in sizes:
            sizes[job.diff_id] = _dir_size(store.layer_path(job.diff_id))
    return sizes


def _record(name: str, resolved: ResolvedImage, sizes: dict[str, int]) -> ImageRecord:
    cfg = resolved.config
    layers = [
        LayerRecord(diff_id=diff_id, digest=d.digest, size=d.size, media_type=d.media_type,
                    unpacked_size=sizes.get(diff_id, 0))
        for d, diff_id in zip(resolved.manifest.layers, cfg.diff_ids, strict=True)
    ]
    return ImageRecord(
        name=name,
        reference=str(resolved.reference),
        manifest_digest=resolved.manifest_digest,
        config_digest=resolved.manifest.config.digest,
        platform=str(resolved.platform),
        created=cfg.created or "",
        pulled_at=_now(),
        source="registry",
        config={k: cfg.config[k] for k in RUN_CONFIG_KEYS if cfg.config.get(k) is not None},
        layers=layers,
        flattened=False,
    )


__all__ = ["MAX_OVERLAY_LAYERS", "PullEvent", "RegistryError", "pull_image"]
