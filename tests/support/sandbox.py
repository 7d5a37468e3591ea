"""Fixtures for real sandboxes: image layer directories and a LinuxRuntime in a temp dir.

    from tests.support.sandbox import busybox_layer, debian_layer, linux_runtime, run  # noqa
    def test_x(linux_runtime, busybox_layer):
        sb = run(linux_runtime.create(spec_for(busybox_layer, "x1")))

``run`` drives a coroutine to completion: ``LinuxSandbox``'s pooled connections belong to
no event loop, so one sandbox can be used from successive event loops. Sessions are
destroyed and the runtime's cgroup parent is unique per test module, so nothing is left
behind.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sandkasten.runtime.base import SessionSpec
from tests.support.rootfs import busybox_rootfs, debian_python_rootfs

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def spec_for(layer: Path, session_id: str | None = None, **kw: Any) -> SessionSpec:
    return SessionSpec(id=session_id or f"t{uuid.uuid4().hex[:10]}", image="test",
                       layer_paths=[layer], **kw)


def userns_mode() -> Any:
    """``security.user_namespace`` for test runtimes: the daemon's variable, so one run of
    a test file covers one mode (``SANDKASTEN_SECURITY__USER_NAMESPACE=off pytest ...``)."""
    mode = os.environ.get("SANDKASTEN_SECURITY__USER_NAMESPACE", "auto")
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"SANDKASTEN_SECURITY__USER_NAMESPACE={mode!r}: auto, on or off")
    return mode


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, overlayfs mounts and cgroups")


@pytest.fixture(scope="session")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem used as a single overlay lower layer."""
    _require_root()
    return busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(scope="session")
def debian_layer() -> Path:
    """The Debian bookworm + python3 rootfs, extracted once into the test cache."""
    _require_root()
    return debian_python_rootfs()


@pytest.fixture(scope="module")
def linux_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A LinuxRuntime with its own data dir and cgroup parent; every session is removed."""
    _require_root()
    from sandkasten.runtime.linux import LinuxRuntime

    data = tmp_path_factory.mktemp("sandkasten-data")
    rt = LinuxRuntime(data, cgroup_parent="sandkasten-tests", user_namespace=userns_mode())
    rt.start()
    try:
        yield rt
    finally:
        for sid in rt.list_sessions():
            rt.destroy_sync(sid)
        rt.close()
