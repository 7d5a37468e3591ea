"""The pre-warmed pool (``pool.enabled``, ``pool.images: {python: 3}``) over SandboxPool.

Sandboxes are pooled per image *manifest digest* and limits: when an image is pulled
again under the same name, the next acquire sees the new digest, drains the old key and
starts filling a new one, so a stale pooled sandbox is never handed out. Only sessions
with the default limits and no persistent workspace are served from the pool.
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


class SessionPool:
    def __init__(self, config: Config, runtime: Runtime, images: ImageSource) -> None:
        self.config = config
        self.images = images
        self.sizes = dict(config.pool.images)
        self.pool = SandboxPool(runtime)
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

    async def close(self) -> None:
        await self.pool.close()


def make_pool(config: Config, runtime: Runtime, images: ImageSource) -> SessionPool:
    return SessionPool(config, runtime, images)
