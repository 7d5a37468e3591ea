"""Fixtures for the SDK, agent-tool and docs tests: ``sk_daemon``, the real daemon
(``sandkasten --config FILE`` in a subprocess, LinuxRuntime) on a free loopback port with
API key ``sk-sandbox-test`` and the ``python`` and ``busybox`` test images, shared by one
test module; and a sync client on it that destroys what a test left."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandkasten.sdk import SyncSandboxClient
from tests.support.daemon import DaemonProcess, cleanup_data_dir, clone_store, image_store

__all__ = ["Daemon", "image_store", "sk_daemon", "sync_client"]


@dataclass(frozen=True)
class Daemon:
    base_url: str
    api_key: str
    data_dir: Path


@pytest.fixture(scope="module")
def sk_daemon(image_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    data = tmp_path_factory.mktemp("sk-sdk") / "data"
    clone_store(image_store, data)
    proc = DaemonProcess(data, workspace={"enabled": True}).start()
    try:
        yield Daemon(proc.base_url, proc.api_key, data)
    finally:
        proc.stop()
        cleanup_data_dir(data)


@pytest.fixture
def sync_client(sk_daemon: Daemon) -> Iterator[SyncSandboxClient]:
    with SyncSandboxClient(sk_daemon.base_url, sk_daemon.api_key) as c:
        yield c
        for s in c.list_sessions():  # nothing a test created outlives it
            c.destroy_session(s.id)
