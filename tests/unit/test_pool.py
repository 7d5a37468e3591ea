"""SandboxPool over a fake runtime: acquire never waits, refills, backs off, drains."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sandkasten.runtime.pool import SandboxPool
from tests.support.fakeruntime import FakeRuntime, FakeSandbox, spec

DIGEST = "sha256:" + "a" * 64


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def test_fill_acquire_refill_close() -> None:
    async def main() -> None:
        rt = FakeRuntime(delay=0.02)
        pool = SandboxPool(rt)
        key = pool.configure(spec(), DIGEST, size=3)
        await until(lambda: pool.stats()[key].ready == 3)
        got = [await pool.acquire(key) for _ in range(3)]
        assert len({sb.id for sb in got if sb}) == 3
        # The pool is empty now and acquire does not wait for the refill.
        t0 = asyncio.get_running_loop().time()
        assert await pool.acquire(key) is None
        assert asyncio.get_running_loop().time() - t0 < 0.01
        await until(lambda: pool.stats()[key].ready == 3)
        # Ids are fresh, the rest of the template is kept.
        assert all(s.id.startswith("sb-") and s.mem_limit_mb == 512 for s in rt.created)
        assert len({s.id for s in rt.created}) == len(rt.created) == 6
        await pool.close()
        assert rt.live == {sb.id for sb in got if sb}  # only the handed-out ones remain
        assert await pool.acquire(key) is None

    run(main)


def test_keys_match_exactly() -> None:
    async def main() -> None:
        pool = SandboxPool(FakeRuntime())
        key = pool.configure(spec(), DIGEST, size=1)
        await until(lambda: pool.stats()[key].ready == 1)
        assert pool.key_for(spec(id="x"), DIGEST) == key
        assert pool.key_for(spec(mem_limit_mb=256), DIGEST) is None
        assert pool.key_for(spec(seccomp="strict"), DIGEST) is None
        assert pool.key_for(spec(), "sha256:" + "b" * 64) is None
        assert pool.key_for(spec(workspace_dir=Path("/w")), DIGEST) is None
        assert await pool.acquire(None) is None
        with pytest.raises(ValueError, match="persistent workspace"):
            pool.configure(spec(workspace_dir=Path("/w")), DIGEST, size=1)
        with pytest.raises(ValueError):
            pool.configure(spec(), DIGEST, size=-1)
        await pool.close()

    run(main)


def test_dead_pooled_sandbox_is_skipped_and_destroyed() -> None:
    async def main() -> None:
        rt = FakeRuntime()
        pool = SandboxPool(rt)
        key = pool.configure(spec(), DIGEST, size=2)
        await until(lambda: pool.stats()[key].ready == 2)
        p = subprocess.Popen(["true"])
        p.wait()
        dead = pool._slots[key].ready[0]
        assert isinstance(dead, FakeSandbox)
        dead.pid = p.pid  # reaped: no such process any more
        sb = await pool.acquire(key)
        assert sb is not None and sb is not dead and dead.destroyed
        await pool.close()

    run(main)


def test_failures_back_off_and_recover() -> None:
    async def main() -> None:
        rt = FakeRuntime(delay=0.001)
        rt.fail = 3
        pool = SandboxPool(rt)
        key = pool.configure(spec(), DIGEST, size=2)
        await until(lambda: pool.stats()[key].last_error is not None)
        assert "overlay mount failed" in (pool.stats()[key].last_error or "")
        # 3 failures back off 0.2 + 0.4 + 0.8 s, then the pool fills.
        await until(lambda: pool.stats()[key].ready == 2, timeout=5)
        assert pool.stats()[key].last_error is None
        await pool.close()
        assert rt.live == set()

    run(main)


def test_shrink_and_concurrency_bound() -> None:
    async def main() -> None:
        rt = FakeRuntime(delay=0.01)
        pool = SandboxPool(rt, max_concurrent_creates=2)
        key = pool.configure(spec(), DIGEST, size=6)
        await until(lambda: pool.stats()[key].ready == 6)
        assert rt.max_in_flight == 2
        pool.configure(spec(), DIGEST, size=1)
        await until(lambda: pool.stats()[key].ready == 1)
        assert len(rt.live) == 1
        await pool.close()
        assert rt.live == set()

    run(main)


def test_close_destroys_sandboxes_still_being_created() -> None:
    async def main() -> None:
        rt = FakeRuntime(delay=0.1)
        pool = SandboxPool(rt, max_concurrent_creates=4)
        key = pool.configure(spec(), DIGEST, size=4)
        await until(lambda: rt.in_flight == 4)
        await pool.close()
        assert rt.in_flight == 0 and rt.live == set() and len(rt.created) == 4
        assert pool.stats()[key].ready == 0
        with pytest.raises(RuntimeError):
            pool.configure(spec(), DIGEST, size=1)

    run(main)
