"""The TTL reaper: destroys sessions whose ``expires_at`` has passed.

One asyncio task; each pass is a scan of the in-memory table (microseconds), so a short
interval costs nothing and keeps expiry within about a second of ``expires_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sandkasten.session.manager import SessionManager

log = logging.getLogger("sandkasten")


class Reaper:
    def __init__(self, manager: SessionManager, interval: float = 1.0) -> None:
        self.manager = manager
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sandkasten-reaper")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.manager.reap()
            except Exception:  # one bad pass must not end expiry for good
                log.exception("reaper pass failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
