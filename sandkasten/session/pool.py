"""The pre-warmed pool (``pool.enabled``, ``pool.images: {python: 3}``) over SandboxPool.

Sandboxes are pooled per image *manifest digest* and limits: when an image is pulled
again under the same name, the next acquire sees the new digest, drains the old key and
starts filling a new one, so a stale pooled sandbox is never handed out. Only sessions
with the default limits and no persistent workspace are served from the pool.

Pooled sandboxes lease their image's layers from the moment they are created (the
runtime handed to SandboxPool is wrapped by :class:`_LeasingRuntime`), so ``image prune``
never removes a layer under a sandbox that waits in the pool.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sandkasten.config import Config
from sandkasten.errors import SandkastenError
from sandkasten.runtime.base import Runtime, Sandbox, SessionSpec
from sandkasten.runtime.pool import PoolKey, SandboxPool
from sandkasten.session.images import ImageInfo, ImageSource

log = logging.getLogger("sandkasten")


@dataclass
class _Entry:
    digest: str
    key: PoolKey
    template: SessionSpec


class _LeasedSandbox:
    """A pooled sandbox whose destroy also drops its lease; everything else passes through."""

    def __init__(self, sandbox: Sandbox, images: ImageSource) -> None:
        self._sandbox = sandbox
        self._images = images

    def __getattr__(self, name: str) -> object:
        return getattr(self._sandbox, name)

    async def destroy(self) -> None:
        try:
            await self._sandbox.destroy()
        finally:
            await asyncio.to_thread(self._images.release, self._sandbox.id)


class _LeasingRuntime:
    """The runtime as SandboxPool sees it: every create leases the template's image."""

    def __init__(self, runtime: Runtime, images: ImageSource) -> None:
        self.runtime = runtime
        self.images = images
        self.by_layers: dict[tuple[str, tuple[str, ...]], ImageInfo] = {}

    def remember(self, image: ImageInfo) -> None:
        self.by_layers[(image.name, tuple(map(str, image.layer_paths)))] = image

    async def create(self, spec: SessionSpec) -> Sandbox:
        image = self.by_layers.get((spec.image, tuple(map(str, spec.layer_paths))))
        if image is not None:
            await asyncio.to_thread(self.images.lease, spec.id, image)
        try:
            sandbox = await self.runtime.create(spec)
        except BaseException:
            await asyncio.to_thread(self.images.release, spec.id)
            raise
        return _LeasedSandbox(sandbox, self.images)  # type: ignore[return-value]

    async def attach(self, session_id: str) -> Sandbox | None:
        return await self.runtime.attach(session_id)

    async def cleanup(self, session_id: str) -> None:
        await self.runtime.cleanup(session_id)


class SessionPool:
    def __init__(self, config: Config, runtime: Runtime, images: ImageSource) -> None:
        self.config = config
        self.images = images
        self.sizes = dict(config.pool.images)
        self._leasing = _LeasingRuntime(runtime, images)
        self.pool = SandboxPool(self._leasing)
        self._entries: dict[str, _Entry] = {}

    def template(self, image: ImageInfo) -> SessionSpec:
        d = self.config.defaults
        return SessionSpec(
            id="pool-template",
            image=image.name,
            layer_paths=image.layer_paths,
            image_env=image.env,
            image_workdir=image.workdir,
            cpu_limit=d.cpu_limit,
            mem_limit_mb=d.mem_limit_mb,
            pids_limit=d.pids_limit,
            network_mode="none",
            exec_mode=d.exec_mode,
            shell_prefer=list(d.shell_prefer),
            readonly_rootfs=d.readonly_rootfs,
            workspace_dir=None,
            seccomp=self.config.security.seccomp,
        )

    def _configure(self, image: ImageInfo) -> _Entry:
        old = self._entries.get(image.name)
        if old is not None and old.digest == image.manifest_digest:
            return old
        if old is not None:  # the name now points at another image: drain the stale key
            log.info(
                "pool: image %s changed digest=%s, refilling", image.name, image.manifest_digest
            )
            self.pool.configure(old.template, old.digest, 0)
        template = self.template(image)
        self._leasing.remember(image)
        key = self.pool.configure(template, image.manifest_digest, self.sizes[image.name])
        entry = self._entries[image.name] = _Entry(image.manifest_digest, key, template)
        return entry

    async def start(self) -> None:
        for name, size in self.sizes.items():
            try:
                image = await asyncio.to_thread(self.images.resolve, name)
            except SandkastenError as e:
                log.warning("pool: image not found name=%s hint=%r", name, e.hint)
                continue
            self._configure(image)
            log.info("pool: keeping %d ready image=%s", size, name)

    async def acquire(self, image: ImageInfo) -> Sandbox | None:
        """A ready sandbox of exactly this image (digest) with the default limits, or None."""
        if image.name not in self.sizes:
            return None
        return await self.pool.acquire(self._configure(image).key)

    def drain(self, name: str) -> None:
        """Stop pooling ``name`` (its image is being deleted): pooled sandboxes of it are
        destroyed, none is created again until the name resolves to an image once more."""
        old = self._entries.pop(name, None)
        if old is not None:
            self.pool.configure(old.template, old.digest, 0)

    async def close(self) -> None:
        await self.pool.close()


def make_pool(config: Config, runtime: Runtime, images: ImageSource) -> SessionPool:
    return SessionPool(config, runtime, images)
