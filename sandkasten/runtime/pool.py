"""A pool of pre-created sandboxes, so creating a session is an acquire, not a start.

    pool = SandboxPool(runtime)
    key = pool.configure(template_spec, manifest_digest, size=4)   # keep 4 ready
    sandbox = await pool.acquire(key)      # a ready Sandbox, or None (caller creates one)
    ...
    await pool.close()                     # stop refilling, destroy what is still pooled

Guarantees:
- ``acquire`` never waits for a sandbox to be created: it returns a ready one or None.
- A pooled sandbox is handed out at most once, and only if its PID 1 is still alive; one
  that died while idle (killed, OOM) is destroyed and the next one is tried.
- Pooled sandboxes match their key exactly: same image manifest digest and the same
  limits, modes and profile. A spec with a persistent workspace is never pooled (the
  workspace is bind-mounted at creation).
- Refills run in the background, at most ``max_concurrent_creates`` at a time across all
  keys, and back off (up to 30 s) while creation fails; the last error is kept in stats.
- After ``close`` nothing pooled is left: sandboxes being created when it is called are
  destroyed as soon as their creation finishes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sandkasten.runtime.base import Runtime, Sandbox, SessionSpec

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class PoolKey:
    """What makes two sandboxes interchangeable."""

    manifest_digest: str
    cpu_limit: float | None
    mem_limit_mb: int | None
    pids_limit: int | None
    network_mode: str
    exec_mode: str
    seccomp: str
    readonly_rootfs: bool
    shell_prefer: tuple[str, ...]

    @classmethod
    def of(cls, spec: SessionSpec, manifest_digest: str) -> PoolKey:
        return cls(manifest_digest, spec.cpu_limit, spec.mem_limit_mb, spec.pids_limit,
                   spec.network_mode, spec.exec_mode, spec.seccomp, spec.readonly_rootfs,
                   tuple(spec.shell_prefer))


@dataclass
class _Slot:
    template: SessionSpec
    target: int
    ready: list[Sandbox] = dataclasses.field(default_factory=list)
    creating: int = 0
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class PoolStats:
    ready: int
    creating: int
    target: int
    last_error: str | None


def _new_id() -> str:
    return "sb-" + secrets.token_hex(8)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SandboxPool:
    def __init__(self, runtime: Runtime, *, new_id: Callable[[], str] = _new_id,
                 max_concurrent_creates: int = 2) -> None:
        self.runtime = runtime
        self.new_id = new_id
        self._slots: dict[PoolKey, _Slot] = {}
        self._creates = asyncio.Semaphore(max_concurrent_creates)
        self._closed = False
        self._orphans: set[asyncio.Task[None]] = set()

    def configure(self, template: SessionSpec, manifest_digest: str, size: int) -> PoolKey:
        """Keep ``size`` sandboxes like ``template`` ready (0 drains the key). Must be called
        from the event loop; refilling starts at once."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        if template.workspace_dir is not None:
            raise ValueError("sandboxes with a persistent workspace cannot be pooled")
        key = PoolKey.of(template, manifest_digest)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(template, size)
            slot.task = asyncio.get_running_loop().create_task(self._refill(key, slot))
        slot.template, slot.target = template, size
        slot.wake.set()
        return key

    def key_for(self, spec: SessionSpec, manifest_digest: str) -> PoolKey | None:
        """The pool key serving ``spec``, if that key is configured."""
        if spec.workspace_dir is not None:
            return None
        key = PoolKey.of(spec, manifest_digest)
        return key if key in self._slots else None

    async def acquire(self, key: PoolKey | None) -> Sandbox | None:
        """A ready sandbox for ``key`` (removed from the pool), or None. Never waits for a
        creation; triggers a refill."""
        slot = self._slots.get(key) if key is not None and not self._closed else None
        if slot is None:
            return None
        try:
            while slot.ready:
                sandbox = slot.ready.pop(0)
                if _alive(sandbox.pid):
                    return sandbox
                log.warning("pooled sandbox %s died while idle; destroying it", sandbox.id)
                await self._destroy(sandbox)
            return None
        finally:
            slot.wake.set()

    def stats(self) -> dict[PoolKey, PoolStats]:
        return {k: PoolStats(len(s.ready), s.creating, s.target, s.last_error)
                for k, s in self._slots.items()}

    async def close(self) -> None:
        """Stop refilling and destroy every pooled sandbox, including those still being
        created. Idempotent."""
        self._closed = True
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._orphans:
            await asyncio.gather(*list(self._orphans), return_exceptions=True)
        ready = [sb for s in self._slots.values() for sb in s.ready]
        for s in self._slots.values():
            s.ready.clear()
        await asyncio.gather(*(self._destroy(sb) for sb in ready))

    async def _destroy(self, sandbox: Sandbox) -> None:
        try:
            await sandbox.destroy()
        except Exception:
            log.exception("destroying pooled sandbox %s failed", sandbox.id)

    async def _create_one(self, slot: _Slot) -> None:
        spec = dataclasses.replace(slot.template, id=self.new_id())
        async with self._creates:
            sandbox = await self.runtime.create(spec)
        if self._closed or len(slot.ready) >= slot.target:
            await self._destroy(sandbox)  # not wanted any more (closed or shrunk)
        else:
            slot.ready.append(sandbox)

    def _spawn(self, key: PoolKey, slot: _Slot) -> None:
        """Start one creation as its own task. It is never cancelled (close() waits for it
        and _create_one then destroys the result), so no half-created sandbox is lost."""
        slot.creating += 1
        task = asyncio.ensure_future(self._create_one(slot))
        self._orphans.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._orphans.discard(t)
            slot.creating -= 1
            exc = None if t.cancelled() else t.exception()
            if exc is None:
                slot.failures, slot.last_error = 0, None
            else:
                slot.failures += 1
                slot.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(MAX_BACKOFF_S, 0.1 * 2 ** min(slot.failures, 10))
                slot.retry_at = asyncio.get_running_loop().time() + delay
                log.warning("pool refill for %s failed (%s); retrying in %.1fs",
                            key.manifest_digest, slot.last_error, delay)
            slot.wake.set()

        task.add_done_callback(done)

    async def _refill(self, key: PoolKey, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            # Shrink first: a lowered target destroys the surplus, oldest first.
            while len(slot.ready) > slot.target:
                await self._destroy(slot.ready.pop(0))
            need = slot.target - len(slot.ready) - slot.creating
            if need > 0 and slot.failures:
                # While creation fails, probe with one creation at a time, backing off.
                if slot.creating:
                    need = 0
                elif (wait := slot.retry_at - loop.time()) > 0:
                    await asyncio.sleep(wait)
                    continue
                else:
                    need = 1
            for _ in range(need):
                self._spawn(key, slot)
            # No await between computing ``need`` and here, so no completion is missed.
            slot.wake.clear()
            await slot.wake.wait()
