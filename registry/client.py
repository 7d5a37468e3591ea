"""``RegistryClient``: resolve a reference to a verified manifest and config, stream blobs.

Guarantees:

- ``resolve`` returns only bytes that were checked: a digest-pinned reference against the
  sha256 of the manifest received, an index entry against its descriptor's digest and
  size, the config against the manifest's config descriptor;
- ``stream_blob`` yields exactly the blob's bytes from ``offset`` on, verifies the size at
  EOF and the sha256 (over the whole blob when ``offset`` is 0 or the caller passes a
  hasher already fed with the first ``offset`` bytes), and raises
  :class:`DigestMismatchError` as its last step instead of finishing when they differ;
  a connection that drops mid-blob is resumed with an HTTP ``Range`` request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from registry.errors import (
    DigestMismatchError,
    ManifestError,
    NotFoundError,
    PlatformError,
    UnreachableError,
)
from registry.manifest import (
    ACCEPT,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    detect_media_type,
    parse_config,
    parse_manifest,
    parse_platform,
    select_platform,
)
from registry.reference import DOCKER_HUB, Reference, parse_reference
from registry.transport import RegistryConfig, Transport, host_of

__all__ = ["RegistryClient", "RegistryConfig", "ResolvedImage"]

MAX_MANIFEST_SIZE = 4 << 20
MAX_CONFIG_SIZE = 64 << 20


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ResolvedImage:
    """A reference resolved to one platform's manifest, with verified config bytes."""

    reference: Reference
    manifest_digest: str
    manifest: Manifest
    manifest_bytes: bytes
    media_type: str
    config_bytes: bytes
    config: ImageConfig
    platform: Platform
    index_digest: str | None = None
    index_bytes: bytes | None = None
    index_media_type: str | None = None
    endpoint: str = ""


class RegistryClient:
    """A client for OCI distribution registries. Use as a context manager."""

    def __init__(
        self,
        config: RegistryConfig | None = None,
        *,
        http_transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config or RegistryConfig()
        self.transport = Transport(self.config, sleep=sleep, http_transport=http_transport)
        self._endpoint_for: dict[str, str] = {}

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # -- resolve -----------------------------------------------------------------------

    def endpoints(self, ref: Reference) -> list[str]:
        """Hosts to try for ``ref``: configured mirrors first for docker.io, then the registry."""
        if ref.registry != DOCKER_HUB:
            return [ref.endpoint]
        return [*(host_of(m) for m in self.config.registry_mirrors), ref.endpoint]

    def resolve(
        self, ref: str | Reference, platform: str | Platform | None = None
    ) -> ResolvedImage:
        """Fetch and verify the manifest (through an index for ``platform``) and the config."""
        if isinstance(ref, str):
            ref = parse_reference(ref)
        wanted = parse_platform(platform) if isinstance(platform, str) else platform
        hosts = self.endpoints(ref)
        for i, host in enumerate(hosts):
            try:
                resolved = self._resolve_at(host, ref, wanted)
            except (UnreachableError, NotFoundError):
                if i + 1 == len(hosts):
                    raise
                continue  # a mirror that is down or lacks the image: try the next one
            self._endpoint_for[ref.name] = host
            return resolved
        raise AssertionError("unreachable: endpoints() is never empty")

    def _get_manifest(self, host: str, ref: Reference, identifier: str) -> tuple[bytes, str]:
        what = f"manifest {ref.repository}:{identifier}" if ":" not in identifier else (
            f"manifest {ref.repository}@{identifier}"
        )
        if ref.tag and identifier == ref.tag:
            what = f"image {ref.repository}:{ref.tag}"
        resp = self.transport.request(
            host, ref.repository, f"/v2/{ref.repository}/manifests/{identifier}",
            headers={"Accept": ACCEPT}, stream=True, what=what,
        )
        try:
            data = bytearray()
            for chunk in resp.iter_raw():
                data += chunk
                if len(data) > MAX_MANIFEST_SIZE:
                    raise ManifestError(f"{what} on {host} is larger than {MAX_MANIFEST_SIZE} B")
            media_type = detect_media_type(bytes(data), resp.headers.get("Content-Type"))
        except httpx.HTTPError as e:
            raise UnreachableError(f"registry {host}: reading {what} failed: {e}") from None
        finally:
            resp.close()
        return bytes(data), media_type

    def _resolve_at(self, host: str, ref: Reference, wanted: Platform | None) -> ResolvedImage:
        data, media_type = self._get_manifest(host, ref, ref.identifier)
        digest = sha256_digest(data)
        if ref.digest and digest != ref.digest:
            raise DigestMismatchError(
                f"registry {host} sent a manifest for {ref} whose digest is {digest}"
            )
        doc = parse_manifest(data, media_type)
        index_digest = index_bytes = index_type = None
        if isinstance(doc, Index):
            index_digest, index_bytes, index_type = digest, data, media_type
            entry = select_platform(doc, wanted)
            data, media_type = self._get_manifest(host, ref, entry.digest)
            digest = sha256_digest(data)
            if digest != entry.digest or len(data) != entry.size:
                raise DigestMismatchError(
                    f"registry {host} sent a manifest for {ref.repository}@{entry.digest} "
                    f"whose digest is {digest} ({len(data)} bytes, expected {entry.size})"
                )
            doc = parse_manifest(data, media_type)
            if not isinstance(doc, Manifest):
                raise ManifestError(f"index entry {entry.digest} of {ref} is not an image manifest")
        if doc.config.size > MAX_CONFIG_SIZE:
            raise ManifestError(f"image config of {ref} is implausibly large ({doc.config.size} B)")
        config_bytes = b"".join(self._stream(host, ref, doc.config, 0, None))
        config = parse_config(config_bytes)
        if len(config.diff_ids) != len(doc.layers):
            raise ManifestError(
                f"{ref}: manifest lists {len(doc.layers)} layers but the config "
                f"{len(config.diff_ids)} diff_ids"
            )
        if wanted is not None and index_digest is None and not wanted.matches(config.platform):
            raise PlatformError(
                f"no image for platform {wanted} in {ref} (available: {config.platform})",
                available=[str(config.platform)],
                hint="choose one with --platform",
            )
        return ResolvedImage(
            reference=ref, manifest_digest=digest, manifest=doc, manifest_bytes=data,
            media_type=media_type, config_bytes=config_bytes, config=config,
            platform=config.platform, index_digest=index_digest, index_bytes=index_bytes,
            index_media_type=index_type, endpoint=host,
        )

    # -- blobs -------------------------------------------------------------------------

    def stream_blob(
        self,
        ref: str | Reference,
        descriptor: Descriptor,
        offset: int = 0,
        *,
        hasher: Any = None,
    ) -> Iterator[bytes]:
        """Yield the blob's bytes from ``offset`` on; verify size, and sha256 when possible.

        ``hasher`` (a ``hashlib.sha256()`` already fed with the first ``offset`` bytes)
        lets a resumed download be verified end to end; without it and with
        ``offset > 0`` only the size is checked. The blob is fetched from the endpoint
        that resolved ``ref`` (a mirror, if one served it).
        """
        if isinstance(ref, str):
            ref = parse_reference(ref)
        host = self._endpoint_for.get(ref.name) or self.endpoints(ref)[-1]
        if hasher is None and offset == 0:
            hasher = hashlib.sha256()
        return self._stream(host, ref, descriptor, offset, hasher)

    def _stream(
        self, host: str, ref: Reference, desc: Descriptor, offset: int, hasher: Any
    ) -> Iterator[bytes]:
        if hasher is None and offset == 0:
            hasher = hashlib.sha256()
        if offset > desc.size:
            raise DigestMismatchError(f"blob {desc.digest}: resume offset beyond its size")
        pos = offset
        failures = 0
        path = f"/v2/{ref.repository}/blobs/{desc.digest}"
        what = f"blob {desc.digest[:19]} of {ref.repository}"
        while pos < desc.size or (desc.size == 0 and pos == 0 and failures == 0):
            headers = {"Range": f"bytes={pos}-"} if pos else {}
            resp = self.transport.request(
                host, ref.repository, path, headers=headers, stream=True, what=what
            )
            try:
                skip = 0
                if pos and resp.status_code == 200:
                    skip = pos  # the server ignored Range: discard what we already have
                elif pos and not resp.headers.get("Content-Range", "").startswith(f"bytes {pos}-"):
                    raise UnreachableError(
                        f"registry {host} answered a Range request for {what} wrongly"
                    )
                for chunk in resp.iter_raw():  # no re-chunking: a drop loses nothing buffered
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                        if not chunk:
                            continue
                    pos += len(chunk)
                    if pos > desc.size:
                        raise DigestMismatchError(
                            f"registry {host} sent more than the {desc.size} bytes of {what}"
                        )
                    if hasher is not None:
                        hasher.update(chunk)
                    failures = 0
                    yield chunk
                if desc.size == 0:
                    break
                if pos < desc.size:
                    raise httpx.RemoteProtocolError("body ended early")
            except httpx.TransportError as e:
                failures += 1
                if failures >= self.config.max_attempts:
                    raise UnreachableError(
                        f"registry {host}: download of {what} kept failing at byte {pos}: {e}"
                    ) from None
                self.transport._sleep(self.transport._backoff(failures - 1))
            finally:
                resp.close()
        if pos != desc.size:
            raise DigestMismatchError(f"{what} from {host}: got {pos} bytes, expected {desc.size}")
        if hasher is not None:
            got = "sha256:" + hasher.hexdigest()
            if got != desc.digest:
                raise DigestMismatchError(
                    f"{what} from registry {host} does not match its digest (got {got})",
                    hint="the registry or a proxy corrupted the data; pull again",
                )
