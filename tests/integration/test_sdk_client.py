"""The SDK against the real daemon over HTTP: the seed's usage, every method, errors."""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sandkasten import SandboxClient
from sandkasten.sdk import (
    BadRequestError,
    NotFoundError,
    SandkastenAPIError,
    SyncSandboxClient,
    UnauthorizedError,
)
from tests.support import sdk as fx
from tests.support.ocibuild import directory, file, push_image
from tests.support.registry import LocalRegistry
from tests.support.sdk import Daemon

image_store = fx.image_store
sk_daemon = fx.sk_daemon
sync_client = fx.sync_client

pytestmark = pytest.mark.integration


def run(coro_fn: Callable[[SandboxClient], Awaitable[Any]], d: Daemon) -> Any:
    async def main() -> Any:
        async with SandboxClient(base_url=d.base_url, api_key=d.api_key) as client:
            try:
                return await coro_fn(client)
            finally:
                for s in await client.list_sessions():
                    await client.destroy_session(s.id)
    return asyncio.run(main())


def test_seed_usage(sk_daemon: Daemon) -> None:
    printed: list[str] = []

    async def main() -> None:
        client = SandboxClient(base_url=sk_daemon.base_url, api_key=sk_daemon.api_key)
        async with await client.create_session(image="python") as session:
            result = await session.exec("python3 -c 'print(2 + 2)'")
            printed.append(result.output)
            await session.write("test.py", "print('Hello!')")
            result = await session.exec("python3 test.py")
            printed.append(result.output)
        await client.aclose()
    asyncio.run(main())
    assert printed == ["4\n", "Hello!\n"]


def test_session_lifecycle_and_context_manager(sk_daemon: Daemon) -> None:
    async def flow(client: SandboxClient) -> None:
        async with await client.create_session(image="python", ttl_seconds=120) as s:
            assert s.image == "python" and len(s.id) >= 8
            info = await s.info()
            assert info.status == "running" and info.cwd == "/workspace"
            assert info.expires_at is not None and info.created_at is not None
            assert (info.expires_at - info.created_at).total_seconds() == pytest.approx(120, 2)
            assert [x.id for x in await client.list_sessions()] == [s.id]
            assert (await client.get_session(s.id)).id == s.id
            stats = await s.stats()
            assert stats.pids >= 1 and stats.memory_bytes > 0
        with pytest.raises(NotFoundError) as e:
            await client.get_session(s.id)
        assert e.value.status == 404 and s.id in e.value.message
        await s.destroy()  # idempotent
    run(flow, sk_daemon)


def test_exec_is_stateful_and_typed(sk_daemon: Daemon) -> None:
    async def flow(client: SandboxClient) -> None:
        async with await client.create_session() as s:
            r = await s.exec("cd / && export GREETING=hi")
            assert r.ok and r.cwd == "/"
            r = await s.exec("echo $GREETING; pwd")
            assert r.output == "hi\n/\n" and r.exit_code == 0 and not r.truncated
            assert (await s.exec("false")).exit_code == 1
            split = await s.exec_split("echo out; echo err >&2")
            assert (split.stdout, split.stderr, split.exit_code) == ("out\n", "err\n", 0)
            t = await s.exec("sleep 5", timeout_ms=300)
            assert t.timed_out and t.duration_ms < 4000
    run(flow, sk_daemon)


def test_exec_stream(sk_daemon: Daemon) -> None:
    async def flow(client: SandboxClient) -> tuple[list[str], int | None, str]:
        async with await client.create_session() as s:
            stream = s.exec_stream("echo one; sleep 1; echo two")
            start, chunks, first = time.monotonic(), [], 0.0
            async for c in stream:
                first = first or time.monotonic() - start
                chunks.append(c)
            assert first < time.monotonic() - start - 0.5  # output arrives while it runs
            assert stream.result is not None
            return chunks, stream.exit_code, stream.result.output
    chunks, code, output = run(flow, sk_daemon)
    assert "".join(chunks) == "one\ntwo\n" == output and code == 0


def test_files(sk_daemon: Daemon, tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_text("from disk")

    async def flow(client: SandboxClient) -> None:
        async with await client.create_session() as s:
            await s.write("notes/a.txt", "text ä")
            assert await s.read_text("/workspace/notes/a.txt") == "text ä"
            blob = bytes(range(256)) * 3
            await s.write("/workspace/b.bin", blob)
            assert await s.read("b.bin") == blob
            assert await s.read("b.bin", max_bytes=10) == blob[:10]
            fc = await s.read_file("b.bin", max_bytes=10)
            assert fc.truncated and fc.path == "/workspace/b.bin"
            names = {e.name: e for e in await s.list()}
            assert names["notes"].is_dir and names["b.bin"].size == 768
            paths = await s.upload([local, ("u.bin", b"\x00up")], path="/workspace/in")
            assert sorted(paths) == ["/workspace/in/local.txt", "/workspace/in/u.bin"]
            assert await s.read("in/u.bin") == b"\x00up"
            with tarfile.open(fileobj=io.BytesIO(await s.archive())) as tar:
                members = {m.name.lstrip("./") for m in tar.getmembers()}
            assert {"notes/a.txt", "b.bin", "in/local.txt"} <= members
            with pytest.raises(NotFoundError):
                await s.read("missing.txt")
    run(flow, sk_daemon)


def test_workspaces_persist_across_sessions(sk_daemon: Daemon) -> None:
    async def flow(client: SandboxClient) -> None:
        async with await client.create_session(workspace_id="sdk-ws-1") as s:
            assert s.workspace_id == "sdk-ws-1"
            await s.write("keep.txt", "kept")
        assert "sdk-ws-1" in [w.id for w in await client.list_workspaces()]
        tar_bytes = await client.export_workspace("sdk-ws-1")
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            assert "keep.txt" in {m.name.lstrip("./") for m in tar.getmembers()}
        await client.import_workspace("sdk-ws-2", tar_bytes)
        await client.write_workspace_file("sdk-ws-2", "extra.txt", "more")
        async with await client.create_session(workspace_id="sdk-ws-2") as s2:
            assert await s2.read_text("keep.txt") == "kept"
            assert (await s2.exec("cat extra.txt")).output == "more"
        for ws in ("sdk-ws-1", "sdk-ws-2"):
            await client.delete_workspace(ws)
        assert not {"sdk-ws-1", "sdk-ws-2"} & {w.id for w in await client.list_workspaces()}
        with pytest.raises(SandkastenAPIError):
            await client.create_session(workspace_id="../escape")
    run(flow, sk_daemon)


def test_errors_carry_status_code_and_message(sk_daemon: Daemon) -> None:
    async def flow(client: SandboxClient) -> None:
        with pytest.raises(NotFoundError) as nf:
            await client.create_session(image="no-such-image")
        assert nf.value.code == "image_not_found" and "sandkasten image pull" in nf.value.message
        async with await client.create_session() as s:
            with pytest.raises(BadRequestError) as br:
                await s.exec("   ")
            assert br.value.status == 400 and br.value.message
    run(flow, sk_daemon)

    async def bad_key(client: SandboxClient) -> None:
        with pytest.raises(UnauthorizedError) as e:
            await client.list_sessions()
        assert e.value.status == 401 and e.value.code == "unauthorized"
    asyncio.run(_with(SandboxClient(sk_daemon.base_url, "wrong-key"), bad_key))


async def _with(client: SandboxClient, fn: Callable[[SandboxClient], Awaitable[None]]) -> None:
    async with client:
        await fn(client)
    assert client._http.is_closed


def test_sync_client(sync_client: SyncSandboxClient) -> None:
    assert sync_client.health()
    with sync_client.create_session(image="python") as s:
        assert s.exec("echo sync").output == "sync\n"
        s.write("s.txt", b"bytes")
        assert s.read("s.txt") == b"bytes" and s.read_text("s.txt") == "bytes"
        stream = s.exec_stream("echo a; sleep 1; echo b")
        start = time.monotonic()
        first = next(iter(stream))
        assert first == "a\n" and time.monotonic() - start < 0.9  # live, not buffered
        assert stream.wait().output == "a\nb\n" and stream.exit_code == 0
        assert s.exec_split("echo e >&2").stderr == "e\n"
        assert [e.name for e in s.list()] == ["s.txt"]
        assert s.upload([("x.txt", b"x")]) == ["/workspace/x.txt"]
        assert s.stats().pids >= 1
        sid = s.id
    with pytest.raises(NotFoundError):
        sync_client.get_session(sid)


def test_stream_closed_early_leaves_the_session_usable(sk_daemon: Daemon) -> None:
    async def flow(client: SandboxClient) -> None:
        async with await client.create_session() as s:
            async with s.exec_stream("echo first; sleep 2; echo late") as stream:
                async for chunk in stream:
                    assert chunk == "first\n"
                    break
            assert stream.result is None
            r = await s.exec("echo next", timeout_ms=10_000)
            assert r.output.endswith("next\n")
    run(flow, sk_daemon)


def test_images_pull_list_delete(sk_daemon: Daemon, registry: LocalRegistry) -> None:
    pushed = push_image(registry, "sdk/img", "1", [[directory("bin"),
                                                    file("bin/tool", b"x", 0o755)]])
    ref = f"{registry.host}/sdk/img:1"

    async def flow(client: SandboxClient) -> None:
        events: list[dict[str, Any]] = []
        img = await client.pull_image(ref, name="sdk-img", progress=events.append)
        assert img.name == "sdk-img" and img.digest == pushed.manifest_digest
        assert img.layers == 1 and img.source == "registry"
        assert events, "per-layer progress arrives before the result"
        assert "sdk-img" in {i.name for i in await client.list_images()}
        with pytest.raises(NotFoundError):
            await client.pull_image(f"{registry.host}/sdk/absent:1", name="absent")
        await client.delete_image("sdk-img")
        assert "sdk-img" not in {i.name for i in await client.list_images()}
    run(flow, sk_daemon)

    with SyncSandboxClient(sk_daemon.base_url, sk_daemon.api_key) as c:
        assert c.pull_image(ref, name="sdk-img2").digest == pushed.manifest_digest
        c.delete_image("sdk-img2")
        with pytest.raises(NotFoundError):
            c.delete_image("sdk-img2")
