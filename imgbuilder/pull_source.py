"""The byte streams of one layer pull: the resumable blob source and verifying readers.

``BlobSource`` feeds the decompressor the compressed blob: first the bytes a previous,
interrupted pull left in ``blobs/partial/<hex>`` (re-read and hashed), then the network
from that offset on, which a fetcher thread appends to the same file. ``LocalBlob`` re-reads
a committed blob, checking it again. ``open_locked_partial`` serializes pulls of one blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from imgbuilder.store import Store
from registry.errors import DigestMismatchError
from registry.manifest import Descriptor

READ_SIZE = 1 << 20
QUEUE_DEPTH = 16


class Cancelled(Exception):
    """Another layer of the same pull failed: stop this one, keep its bytes."""


class BlobSource(io.RawIOBase):
    """The compressed blob as a readable stream.

    First the bytes already in the partial file (hashed as they are re-read), then the
    network from that offset on, appended to the partial file by a fetcher thread. Reading
    to EOF means the blob's size and sha256 were verified by ``stream_blob``: it raises
    instead of ending otherwise, and that error is re-raised here.
    """

    def __init__(
        self,
        fh: io.FileIO,
        prefix: int,
        chunks: Callable[[int, Any], Iterator[bytes]],
        on_bytes: Callable[[int], None],
        cancel: threading.Event,
    ) -> None:
        super().__init__()
        self._fh = fh
        self._prefix_left = prefix
        self._hasher = hashlib.sha256()
        self._chunks = chunks
        self._on_bytes = on_bytes
        self._cancel = cancel
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_DEPTH)
        self._thread: threading.Thread | None = None
        self._buf = memoryview(b"")
        self._eof = False
        # The terminal item (EOF or the fetcher's error), kept so that every reader sees
        # it: after an extraction error the decompressor thread and our drain() may both
        # be reading, and a terminal item taken by one must not leave the other waiting.
        self._final: list[bytes | BaseException | None] = []
        fh.seek(0)

    def readable(self) -> bool:
        return True

    def _fetch(self, offset: int) -> None:
        """Fetcher thread: network → partial file → queue. Ends with None or an exception."""
        try:
            for chunk in self._chunks(offset, self._hasher):
                if self._cancel.is_set():
                    raise Cancelled
                view = memoryview(chunk)
                while view:  # FileIO.write may write less than asked
                    view = view[self._fh.write(view) or 0 :]
                self._queue.put(chunk)
            self._queue.put(None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._queue.put(e)

    def _next(self) -> bytes | None:
        if self._cancel.is_set():
            raise Cancelled
        if self._prefix_left > 0:
            data = self._fh.read(min(READ_SIZE, self._prefix_left))
            if not data:
                raise DigestMismatchError("partial download shrank while being resumed")
            self._prefix_left -= len(data)
            self._hasher.update(data)
            self._on_bytes(len(data))
            return data
        if self._thread is None:
            self._fh.seek(0, os.SEEK_END)
            self._thread = threading.Thread(
                target=self._fetch, args=(self._fh.tell(),), daemon=True, name="blob-fetch"
            )
            self._thread.start()
        while True:
            if self._final:
                item = self._final[0]
                break
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if self._cancel.is_set():
                    raise Cancelled from None
        if item is None or isinstance(item, BaseException):
            self._final[:] = [item]
        if isinstance(item, BaseException):
            raise item
        if item is not None:
            self._on_bytes(len(item))
        return item

    def readinto(self, b: Any) -> int:
        if not self._buf:
            if self._eof:
                return 0
            data = self._next()
            if data is None:
                self._eof = True
                return 0
            self._buf = memoryview(data)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, fewer only at EOF (format sniffing needs whole headers)."""
        if size is None or size < 0:
            return self.readall()
        parts: list[bytes] = []
        need = size
        while need > 0:
            if not self._buf:
                if self._eof:
                    break
                data = self._next()
                if data is None:
                    self._eof = True
                    break
                self._buf = memoryview(data)
            piece = self._buf[:need]
            parts.append(bytes(piece))
            self._buf = self._buf[len(piece) :]
            need -= len(piece)
        return b"".join(parts)

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass

    def stop(self) -> None:
        """Stop the fetcher thread (after an error) and wait for it."""
        self._cancel.set()
        if self._thread is not None:
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.1)
            self._thread.join()


class DiffIdReader(io.RawIOBase):
    """Passes the uncompressed tar stream through, hashing it for the diff_id."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner
        self.hasher = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._inner.read(-1 if size is None else size)
        self.hasher.update(data)
        self.size += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


def open_locked_partial(store: Store, digest: str) -> io.FileIO:
    """Open blobs/partial/<hex> and hold an exclusive flock on it.

    The lock serializes every pull (thread or process) that wants this blob. A holder that
    finishes renames the file into blobs/sha256/ (or unlinks it), so after waiting we check
    that the path still names the inode we locked, and reopen if not.
    """
    path = store.partial_blob_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return io.FileIO(fd, "r+")
        os.close(fd)


class LocalBlob(io.RawIOBase):
    """A committed blob re-read for extraction, its sha256 and size checked at EOF."""

    def __init__(self, fh: Any, desc: Descriptor, on_bytes: Callable[[int], None]) -> None:
        super().__init__()
        self._fh, self._desc, self._on_bytes = fh, desc, on_bytes
        self._hasher = hashlib.sha256()
        self._size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_SIZE), b""))
        data: bytes = self._fh.read(size)
        if data:
            self._hasher.update(data)
            self._size += len(data)
            self._on_bytes(len(data))
        elif (self._size, "sha256:" + self._hasher.hexdigest()) != (
            self._desc.size, self._desc.digest
        ):
            raise DigestMismatchError(f"stored blob {self._desc.digest[:19]} is corrupt")
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass
