"""The Linux driver: ``LinuxRuntime`` implements ``sandkasten.runtime.base.Runtime``.

    rt = LinuxRuntime(data_dir)                 # starts the fork server (once)
    sb = await rt.create(spec)                  # a fork, namespaces, overlay, PID 1 runner
    await sb.exec("echo hi"); await sb.destroy()

The names are loaded on first use (``runtime.py``): the fork server imports this package's
modules (plan, mounts, namespaces...) but must not pay for the daemon's side (asyncio,
subprocess, threads), which would only enlarge every sandbox's PID 1 (a fork of it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandkasten.runtime.linux.runtime import (
        ForkServerClient,
        LinuxRuntime,
        SessionExistsError,
        proc_start_time,
    )
    from sandkasten.runtime.linux.sandbox import LinuxSandbox

__all__ = ["ForkServerClient", "LinuxRuntime", "LinuxSandbox", "SessionExistsError",
           "proc_start_time"]


def __getattr__(name: str) -> Any:
    if name == "LinuxSandbox":
        from sandkasten.runtime.linux import sandbox

        return sandbox.LinuxSandbox
    if name in __all__:
        from sandkasten.runtime.linux import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
