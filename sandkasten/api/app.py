"""The FastAPI application: ``create_app(config, runtime)``.

Build the runtime before the event loop starts threads: :class:`LinuxRuntime` starts a
single-threaded fork server at construction, and a process must never fork once it has
threads. :func:`sandkasten.cli.daemon.serve` does exactly that; ``create_app`` without a
runtime constructs one itself and must then be called before the server starts.

Lifespan: on startup the state store is read back and live sessions are re-attached
(``SessionManager.restore``), then the reaper (and the pool, if enabled) start. On shutdown
sessions are destroyed, or kept when ``keep_sessions_on_shutdown`` is set.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

import sandkasten
from sandkasten.api import errors
from sandkasten.api.middleware import JsonBodyMiddleware
from sandkasten.api.routers import exec as exec_router
from sandkasten.api.routers import files, health, sessions, workspaces
from sandkasten.api.routers import images as images_router
from sandkasten.config import Config
from sandkasten.runtime.base import Runtime
from sandkasten.session.images import ImageSource, StoreImages
from sandkasten.session.manager import SessionManager
from sandkasten.session.reaper import Reaper
from sandkasten.store.db import StateDB

log = logging.getLogger("sandkasten")

DESCRIPTION = """Stateful Linux sandboxes for AI agents.

Every endpoint under `/v1` needs `Authorization: Bearer <api_key>`. Request bodies are JSON,
whatever their `Content-Type` says (curl's `-d` works as is). Errors are
`{"error": "...", "code": "..."}` with an optional `hint`.
"""


def make_runtime(config: Config) -> Runtime:
    """The Linux driver over the image store in ``data_dir``."""
    from imgbuilder.store import Store
    from sandkasten.runtime.linux import LinuxRuntime

    runtime: Runtime = LinuxRuntime(
        config.data_dir, store=Store(config.data_dir), allow_unlimited=config.allow_unlimited,
        user_namespace=config.security.user_namespace,
        userns_base=config.security.userns_base,
    )
    return runtime


def create_app(
    config: Config,
    runtime: Runtime | None = None,
    *,
    images: ImageSource | None = None,
    pool: Any = None,
    reaper_interval: float = 1.0,
) -> FastAPI:
    config.check_serving()  # before anything is created: no runtime, no database
    if runtime is None:
        runtime = make_runtime(config)
    if images is None:
        from registry.transport import RegistryConfig

        images = StoreImages(
            config.data_dir,
            registry_settings=RegistryConfig(
                insecure_registries=list(config.insecure_registries),
                registry_mirrors=list(config.registry_mirrors),
            ),
        )
    db = StateDB(config.database_path)
    if pool is None and config.pool.enabled:
        from sandkasten.session.pool import make_pool

        pool = make_pool(config, runtime, images)
    manager = SessionManager(config, runtime, db, images, pool=pool)
    reaper = Reaper(manager, reaper_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attached, cleaned = await manager.restore()
        if attached or cleaned:
            log.info("restored sessions attached=%d cleaned=%d", attached, cleaned)
        reaper.start()
        if pool is not None:
            await pool.start()
        try:
            yield
        finally:
            await reaper.stop()
            if pool is not None:
                await pool.close()
            await manager.shutdown(keep=config.keep_sessions_on_shutdown)
            db.close()

    app = FastAPI(
        title="Sandkasten",
        version=sandkasten.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        strict_content_type=False,
    )
    app.state.config = config
    app.state.manager = manager
    app.state.runtime = runtime
    errors.install(app)
    app.add_middleware(JsonBodyMiddleware)
    for module in (health, sessions, exec_router, files, workspaces, images_router):
        app.include_router(module.router)
    return app
