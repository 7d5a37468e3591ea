"""Layer compression: gzip, zstd or none, chosen by magic bytes and media type, streamed.

``open_decompressed(fileobj, media_type)`` returns a readable stream of the uncompressed
tar. Decompression (and hashing of the uncompressed bytes, which gives the diff_id) runs in
a background thread that hands large chunks to the reader through a bounded queue: zlib,
zstandard and hashlib release the GIL, so on a machine with two cores the untar in the
calling thread overlaps with inflating and hashing, as ``tar -xzf`` overlaps with gzip.

Nothing is written to disk and memory stays bounded (``QUEUE_CHUNKS`` x ``CHUNK``).

Why magic bytes decide: registries serve layers whose media type says gzip but whose
bytes are plain tar (and the reverse); containerd also decides by magic. The media type
is used to refuse compressions we cannot read (``+bzip2``, ``+encrypted``...) and as a
cross-check: bytes that are neither gzip, zstd nor a tar header are a corrupt layer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import queue
import shutil
import subprocess
import threading
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

import zstandard

from imgbuilder.errors import LayerError


class Readable(Protocol):
    """Anything with ``read(n)``: files, pipes, sockets' makefile, HTTP response streams."""

    def read(self, size: int = ..., /) -> bytes: ...


GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20
QUEUE_CHUNKS = 16

_UNSUPPORTED = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x04\x22\x4d\x18": "lz4",
}


def kind_from_media_type(media_type: str | None) -> str | None:
    """``gzip``/``zstd``/``none`` from an OCI or Docker layer media type; None if unknown."""
    if not media_type:
        return None
    mt = media_type.lower()
    if mt.endswith(("+gzip", ".tar.gzip", "tar.gzip")) or mt.endswith(".gzip"):
        return "gzip"
    if mt.endswith(("+zstd", ".zstd")):
        return "zstd"
    if mt.endswith((".tar", "+tar", "/tar", "x-tar")):
        return "none"
    for bad in ("+bzip2", "+xz", "+encrypted", "+lz4"):
        if bad in mt:
            raise LayerError(f"unsupported layer media type {media_type}")
    return None


def detect(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` from the first bytes of a stream (raises on bzip2/xz)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    for magic, name in _UNSUPPORTED.items():
        if head.startswith(magic):
            raise LayerError(f"{name}-compressed tarballs are not supported (use gzip or zstd)")
    return "none"


def looks_like_tar(head: bytes) -> bool:
    """A ustar/GNU magic at offset 257, or an all-zero first block (an empty archive)."""
    if len(head) >= 263 and head[257:262] == b"ustar":
        return True
    return len(head) >= 512 and head[:512] == bytes(512)


class _Gunzip:
    """Inflate gzip, including several concatenated members (``cat a.gz b.gz``)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)

    def __call__(self, data: bytes) -> bytes:
        out = [self._d.decompress(data)]
        while self._d.eof and self._d.unused_data:
            rest = self._d.unused_data
            self._d = zlib.decompressobj(wbits=31)
            out.append(self._d.decompress(rest))
        return b"".join(out) if len(out) > 1 else out[0]

    def finish(self) -> bytes:
        if not self._d.eof:
            raise LayerError("truncated gzip stream")
        return self._d.flush()


class _Unzstd:
    """Decompress zstd across frames (pzstd and zstd -T0 may write several)."""

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()
        self._d = self._dctx.decompressobj()
        self._started = False

    def __call__(self, data: bytes) -> bytes:
        out = []
        while data:
            self._started = True
            out.append(self._d.decompress(data))
            if self._d.eof:
                data = self._d.unused_data
                self._d = self._dctx.decompressobj()
                self._started = False
            else:
                data = b""
        return b"".join(out)

    def finish(self) -> bytes:
        if self._started:
            raise LayerError("truncated zstd stream")
        return b""


ZSTD_BIN = shutil.which("zstd")
_F_SETPIPE_SZ = 1031


class _ZstdProcess:
    """``zstd -dcq`` in a child process, read like a file.

    Decompressing outside the interpreter keeps it off the GIL, so it runs truly in
    parallel with the untar, as GNU tar runs zstd. A regular file is handed to the child
    directly; any other source is fed through a pipe by a thread.
    """

    def __init__(self, source: Readable | BinaryIO, head: bytes) -> None:
        self.count = 0
        self._error: BaseException | None = None
        self._feeder: threading.Thread | None = None
        stdin: Any = subprocess.PIPE
        try:
            start = source.tell() - len(head)  # type: ignore[union-attr]
            source.fileno()  # type: ignore[union-attr]
            source.seek(start)  # type: ignore[union-attr]
            self.count = os.fstat(source.fileno()).st_size - start  # type: ignore[union-attr]
            stdin = source
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            stdin = subprocess.PIPE
        self.proc = subprocess.Popen([ZSTD_BIN or "zstd", "-dcq"], stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        with contextlib.suppress(OSError):  # bigger pipe: fewer, larger reads
            fcntl.fcntl(self._out, _F_SETPIPE_SZ, CHUNK)
        if stdin is subprocess.PIPE:
            self._feeder = threading.Thread(target=self._feed, args=(source, head),
                                            name="zstd-feed", daemon=True)
            self._feeder.start()

    def _feed(self, source: Readable | BinaryIO, first: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            chunk = first
            while chunk:
                self.count += len(chunk)
                self.proc.stdin.write(chunk)
                chunk = source.read(CHUNK)
        except BrokenPipeError:
            pass  # the child stopped (corrupt data or closed): reported by finish()
        except BaseException as e:
            self._error = e
            self.proc.kill()
        finally:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def read(self, size: int = CHUNK, /) -> bytes:
        parts = []
        got = 0
        while got < size // 4:  # gather a large chunk: fewer hand-offs between threads
            data = os.read(self._out, size - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def finish(self) -> None:
        rc = self.proc.wait()
        if self._feeder is not None:
            self._feeder.join()
        if self._error is not None:
            raise self._error
        if rc != 0:
            assert self.proc.stderr is not None
            msg = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise LayerError("corrupt or truncated zstd stream"
                             + (f": {msg[-1]}" if msg else ""))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        if self._feeder is not None:
            self._feeder.join(timeout=5)


class DecompressedStream(io.RawIOBase):
    """A read-only stream of decompressed bytes, produced by a background thread.

    Guarantees: bytes come out in order, exactly as decompressed; an error in the source or
    in decompression is raised by the next ``read`` in the caller's thread (as LayerError,
    or the source's own OSError); ``close()`` stops the thread. ``sha256`` holds the running
    hash of every uncompressed byte delivered by the producer; ``diff_id()`` is valid once
    the stream has been read to EOF.
    """

    def __init__(self, source: Readable | BinaryIO, kind: str, head: bytes) -> None:
        super().__init__()
        self.compression = kind
        self.compressed_bytes = 0
        self.uncompressed_bytes = 0
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_CHUNKS)
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._stop = threading.Event()
        decoder: Callable[[bytes], bytes] | None = None
        self._ext: _ZstdProcess | None = None
        if kind == "gzip":
            decoder = _Gunzip()
        elif kind == "zstd" and ZSTD_BIN:
            self._ext = _ZstdProcess(source, head)
            source, head = self._ext, b""
        elif kind == "zstd":
            decoder = _Unzstd()
        # sha256 runs in its own thread: with zlib/zstd in the producer and the untar in
        # the caller, the three stages overlap (hashlib releases the GIL too).
        self._hash_queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_CHUNKS)
        self._hasher = threading.Thread(target=self._hash_loop, name="diff-id", daemon=True)
        self._hasher.start()
        self._thread = threading.Thread(
            target=self._produce, args=(source, decoder, head), name="decompress", daemon=True
        )
        self._thread.start()

    # -- producer and hasher (background threads) ------------------------------------
    def _put(self, item: bytes | BaseException | None,
             q: queue.Queue[Any] | None = None) -> bool:
        q = self._queue if q is None else q
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _emit(self, data: bytes) -> bool:
        if not data:
            return True
        self.uncompressed_bytes += len(data)
        return self._put(data, self._hash_queue) and self._put(data)

    def _hash_loop(self) -> None:
        while True:
            try:
                item = self._hash_queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is None:
                return
            self._hash.update(item)

    def _produce(self, source: Readable | BinaryIO, decoder: Callable[[bytes], bytes] | None,
                 head: bytes) -> None:
        try:
            data = head or source.read(CHUNK)
            while data:
                self.compressed_bytes += len(data)
                out = decoder(data) if decoder is not None else data
                if not self._emit(out):
                    return
                if self._stop.is_set():
                    return
                data = source.read(CHUNK)
            if decoder is not None:
                tail = decoder.finish()  # type: ignore[attr-defined]
                if not self._emit(tail):
                    return
            if self._ext is not None:
                self._ext.finish()
                self.compressed_bytes = self._ext.count
            self._put(None, self._hash_queue)
            self._put(None)
        except zlib.error as e:
            self._put(LayerError(f"corrupt gzip stream: {e}"))
        except zstandard.ZstdError as e:
            self._put(LayerError(f"corrupt zstd stream: {e}"))
        except BaseException as e:  # handed to the reader, raised in its thread
            self._put(e)

    # -- consumer ----------------------------------------------------------------------
    def _fill(self) -> bool:
        if self._eof:
            return False
        item = self._queue.get()
        if item is None:
            self._eof = True
            return False
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        self._buf = item
        self._pos = 0
        return True

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from what is already decompressed; b"" only at EOF."""
        if self._pos >= len(self._buf) and not self._fill():
            return b""
        if size < 0 or (self._pos == 0 and size >= len(self._buf)):
            out = self._buf[self._pos:] if self._pos else self._buf
            self._buf, self._pos = b"", 0
            return out
        out = self._buf[self._pos:self._pos + size]
        self._pos += len(out)
        return out

    def peek(self) -> bytes:
        """The bytes already decompressed and not yet read (b"" at EOF); consumes nothing."""
        if self._pos >= len(self._buf) and not self._fill():
            return b""
        return self._buf[self._pos:]

    def read(self, size: int | None = -1) -> bytes:
        """Exactly ``size`` bytes unless EOF comes first (all of it for ``size < 0``)."""
        if size is None or size < 0:
            parts = []
            while chunk := self.read1(-1):
                parts.append(chunk)
            return b"".join(parts)
        parts = []
        need = size
        while need > 0:
            chunk = self.read1(need)
            if not chunk:
                break
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read1(len(b))
        n = len(data)
        memoryview(b)[:n] = data
        return n

    def at_eof(self) -> bool:
        return self._eof and self._pos >= len(self._buf)

    def diff_id(self) -> str:
        """``sha256:<hex>`` of the whole uncompressed stream; only once it was read to EOF."""
        if not self.at_eof():
            raise LayerError("diff_id asked before the stream was read to the end")
        self._hasher.join()
        return "sha256:" + self._hash.hexdigest()

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            # Unblock a producer waiting on a full queue, then let it finish.
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            if self._ext is not None:
                self._ext.close()  # kills the child, which ends the producer's read
            self._thread.join(timeout=5)
            self._hasher.join(timeout=5)
        super().close()


def open_decompressed(fileobj: Readable | BinaryIO,
                      media_type: str | None = None) -> DecompressedStream:
    """Stream the uncompressed tar inside ``fileobj`` (gzip, zstd or plain tar).

    The compression is detected from the first bytes; ``media_type`` rejects unsupported
    ones early and cross-checks: bytes that are neither compressed nor a tar header raise
    :class:`LayerError`. The caller closes the returned stream (it does not close
    ``fileobj``).
    """
    declared = kind_from_media_type(media_type)
    head = fileobj.read(CHUNK)
    kind = detect(head)
    if kind == "none" and head and not looks_like_tar(head):
        what = f"declared {declared}" if declared and declared != "none" else "no known format"
        raise LayerError(f"not a tar, gzip or zstd stream ({what})")
    return DecompressedStream(fileobj, kind, head)
