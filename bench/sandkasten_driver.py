"""The sandkasten side of bench_sandbox.py: LinuxRuntime, SandboxPool and Sandbox.exec."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

Ms = list[float]


@dataclass
class Outcome:
    results: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def run(rootfs: Path, data_dir: Path, concs: list[int], runs: int,
              limits: dict[str, float], cmd: list[str]) -> Outcome:
    out = Outcome()
    try:
        from sandkasten.runtime.linux import LinuxRuntime  # type: ignore[attr-defined]
    except ImportError as e:
        out.notes.append(f"sandkasten: LinuxRuntime is not available in this tree ({e})")
        return out
    from bench.bench_sandbox import pss_kib, tree
    from sandkasten.runtime.base import SessionSpec
    from sandkasten.runtime.pool import SandboxPool

    data_dir.mkdir(parents=True, exist_ok=True)
    runtime = LinuxRuntime(data_dir, store=None)
    command = " ".join(c if c.isidentifier() or c.startswith("-") else f"'{c}'" for c in cmd)
    n = 0

    def spec() -> SessionSpec:
        nonlocal n
        n += 1
        return SessionSpec(id=f"bench-{n}", image="bench", layer_paths=[rootfs],
                           cpu_limit=limits["cpu"], mem_limit_mb=int(limits["memory_mb"]),
                           pids_limit=int(limits["pids"]))

    async def cold_one() -> float:
        t0 = time.perf_counter()
        sb = await runtime.create(spec())
        res = await sb.exec(command)
        ms = (time.perf_counter() - t0) * 1000
        await sb.destroy()
        if res.exit_code != 0 or res.output.strip() != "4":
            raise RuntimeError(f"sandkasten exec failed: {res}")
        return ms

    for c in concs:
        samples: Ms = []
        while len(samples) < max(runs, c):
            samples += await asyncio.gather(*(cold_one() for _ in range(c)))
        out.results[f"cold{c}"] = samples

        sandboxes = await asyncio.gather(*(runtime.create(spec()) for _ in range(c)))
        try:
            await asyncio.gather(*(sb.exec("true") for sb in sandboxes))
            await asyncio.sleep(0.5)
            out.results[f"idle{c}"] = sum(pss_kib(tree(sb.pid)) for sb in sandboxes) / c
            if c == concs[0]:
                sb = sandboxes[0]
                rtt: Ms = []
                for _ in range(max(runs, 100)):
                    t0 = time.perf_counter()
                    r = await sb.exec("echo 4")
                    rtt.append((time.perf_counter() - t0) * 1000)
                    assert r.output.strip() == "4", r
                out.results["exec"] = rtt
        finally:
            await asyncio.gather(*(sb.destroy() for sb in sandboxes))

    pool = SandboxPool(runtime, max_concurrent_creates=2)
    template = spec()
    key = pool.configure(template, "sha256:bench", size=min(runs, 20))
    acquired = []
    try:
        pooled: Ms = []
        while len(pooled) < runs:
            deadline = time.monotonic() + 60
            while pool.stats()[key].ready < pool.stats()[key].target:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pool does not fill: {pool.stats()[key]}")
                await asyncio.sleep(0.05)
            for _ in range(pool.stats()[key].ready):
                t0 = time.perf_counter()
                sb = await pool.acquire(key)
                pooled.append((time.perf_counter() - t0) * 1000)
                if sb is not None:
                    acquired.append(sb)
        out.results["pooled"] = pooled
    finally:
        await pool.close()
        await asyncio.gather(*(sb.destroy() for sb in acquired))
    out.notes.append("sandkasten idle PSS counts the sandbox's PID 1 (runner) and its shell.")
    return out
