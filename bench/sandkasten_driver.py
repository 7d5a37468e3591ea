"""The sandkasten side of bench_sandbox.py: LinuxRuntime, SandboxPool and Sandbox.exec."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import pss_kib, tree

Ms = list[float]
CGROUP_PARENT = "sk-bench"


@dataclass
class Outcome:
    results: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def p50(xs: Ms) -> float:
    return sorted(xs)[len(xs) // 2]


def session_pids(sb: Any) -> list[int]:
    """Every process of the session: its cgroup's, else PID 1 and its descendants."""
    cg = getattr(sb, "_cgroup", None)
    pids: list[int] = cg.procs() if cg is not None else []
    return pids or tree(sb.pid)


def remove_parent(runtime: Any) -> None:
    mgr = runtime.cgroups
    dirs = list(getattr(mgr, "parents", {}).values()) or [getattr(mgr, "path", None)]
    for d in {os.path.realpath(d) for d in dirs if d is not None}:
        with contextlib.suppress(OSError):
            os.rmdir(d)


async def run(rootfs: Path, data_dir: Path, concs: list[int], runs: int,
              limits: dict[str, float], cmd: list[str]) -> Outcome:
    out = Outcome()
    try:
        from sandkasten.runtime.linux import LinuxRuntime
    except ImportError as e:
        out.notes.append(f"sandkasten: LinuxRuntime is not available in this tree ({e})")
        return out
    from sandkasten.runtime.base import SessionSpec
    from sandkasten.runtime.pool import SandboxPool

    data_dir.mkdir(parents=True, exist_ok=True)
    runtime = LinuxRuntime(data_dir, store=None, cgroup_parent=CGROUP_PARENT)
    runtime.start()
    command = " ".join(c if c.isidentifier() or c.startswith("-") else f"'{c}'" for c in cmd)
    counter = iter(range(1, 1 << 30))

    def spec() -> SessionSpec:
        return SessionSpec(id=f"bench-{next(counter)}", image="bench", layer_paths=[rootfs],
                           cpu_limit=limits["cpu"], mem_limit_mb=int(limits["memory_mb"]),
                           pids_limit=int(limits["pids"]))

    create_ms: Ms = []
    first_exec_ms: Ms = []

    async def cold_one() -> float:
        t0 = time.perf_counter()
        sb = await runtime.create(spec())
        t1 = time.perf_counter()
        res = await sb.exec(command)
        t2 = time.perf_counter()
        await sb.destroy()
        if res.exit_code != 0 or res.output.strip() != "4":
            raise RuntimeError(f"sandkasten exec failed: {res}")
        create_ms.append((t1 - t0) * 1000)
        first_exec_ms.append((t2 - t1) * 1000)
        return (t2 - t0) * 1000

    try:
        await cold_one()  # warm the fork server and the page cache
        for c in concs:
            samples: Ms = []
            create_ms.clear()
            first_exec_ms.clear()
            while len(samples) < max(runs, c):
                samples += await asyncio.gather(*(cold_one() for _ in range(c)))
            out.results[f"cold{c}"] = samples
            out.notes.append(f"sandkasten cold, {c} at a time: create p50 {p50(create_ms):.1f} ms"
                             f" + first exec p50 {p50(first_exec_ms):.1f} ms")

            sandboxes = await asyncio.gather(*(runtime.create(spec()) for _ in range(c)))
            try:
                await asyncio.gather(*(sb.exec("true") for sb in sandboxes))
                await asyncio.sleep(0.5)
                out.results[f"idle{c}"] = sum(pss_kib(session_pids(sb)) for sb in sandboxes) / c
                if c == concs[0]:
                    sb = sandboxes[0]
                    rtt: Ms = []
                    for _ in range(max(runs, 100)):
                        t0 = time.perf_counter()
                        r = await sb.exec("echo 4")
                        rtt.append((time.perf_counter() - t0) * 1000)
                        if r.output.strip() != "4":
                            raise RuntimeError(f"echo returned {r}")
                    out.results["exec"] = rtt
            finally:
                await asyncio.gather(*(sb.destroy() for sb in sandboxes))
        out.results["pooled"] = await pooled(runtime, SandboxPool, spec(), runs)
    finally:
        runtime.close()
        remove_parent(runtime)
    out.notes.append("sandkasten idle PSS sums every process in the session's cgroup "
                     "(the runner as PID 1 and its shell).")
    return out


async def pooled(runtime: Any, pool_cls: Any, template: Any, runs: int) -> Ms:
    """Acquire latency from a filled pool (refills between rounds are not timed)."""
    pool = pool_cls(runtime, max_concurrent_creates=2)
    key = pool.configure(template, "sha256:bench", size=min(runs, 20))
    acquired = []
    samples: Ms = []
    try:
        while len(samples) < runs:
            deadline = time.monotonic() + 60
            while pool.stats()[key].ready < pool.stats()[key].target:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pool does not fill: {pool.stats()[key]}")
                await asyncio.sleep(0.05)
            for _ in range(pool.stats()[key].ready):
                t0 = time.perf_counter()
                sb = await pool.acquire(key)
                samples.append((time.perf_counter() - t0) * 1000)
                if sb is None:
                    raise RuntimeError("a filled pool returned nothing")
                acquired.append(sb)
    finally:
        await pool.close()
        await asyncio.gather(*(sb.destroy() for sb in acquired))
    return samples
