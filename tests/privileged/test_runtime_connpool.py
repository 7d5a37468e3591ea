"""Runner connections are reused per sandbox, and reuse never mixes up replies: under
concurrency, after timeouts, cancellations, abandoned streams and connections the runner
closed."""

from __future__ import annotations

import asyncio
import os
import select
from pathlib import Path
from typing import Any

import pytest

from tests.support.sandbox import busybox_layer, linux_runtime, run, spec_for  # noqa: F401

pytestmark = pytest.mark.privileged


def _runner_sockets(pid: int) -> set[str]:
    """Socket inodes PID 1 holds (its listener and its accepted connections)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.fixture
def sandbox(linux_runtime: Any, busybox_layer: Path) -> Any:  # noqa: F811
    sb = run(linux_runtime.create(spec_for(busybox_layer)))
    try:
        yield sb
    finally:
        run(sb.destroy())


def test_successive_requests_share_one_connection(sandbox: Any) -> None:
    async def go() -> list[set[str]]:
        seen = []
        for i in range(10):
            assert (await sandbox.exec(f"echo {i}")).output == f"{i}\n"
            await sandbox.write_file(f"f{i}", b"x")
            seen.append(_runner_sockets(sandbox.pid))
        return seen

    seen = run(go())
    # the listener plus one connection, the same one after every request
    assert len(seen[0]) == 2
    assert all(s == seen[0] for s in seen)


def test_concurrent_requests_get_their_own_replies(sandbox: Any) -> None:
    async def go() -> None:
        async def one(i: int) -> None:
            if i % 2:
                r = await sandbox.exec(f"echo n{i}")
                assert r.output == f"n{i}\n"
            else:
                await sandbox.write_file(f"c{i}", str(i).encode())
                data, _ = await sandbox.read_file(f"c{i}")
                assert data == str(i).encode()

        for _ in range(3):
            await asyncio.gather(*(one(i) for i in range(24)))

    run(go())
    from sandkasten.runtime.linux.sandbox import MAX_IDLE

    assert 1 <= len(sandbox._idle) <= MAX_IDLE


def test_cancelled_and_timed_out_requests_do_not_poison_the_pool(sandbox: Any) -> None:
    async def go() -> None:
        task = asyncio.create_task(sandbox.exec("sleep 0.5; echo late"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the late reply goes to a closed connection, never to the next request
        assert (await sandbox.exec("echo next")).output == "next\n"
        r = await sandbox.exec("sleep 5", timeout_ms=200)
        assert r.timed_out
        assert (await sandbox.exec("echo after")).output == "after\n"

    run(go())


def test_abandoned_stream_then_requests(sandbox: Any) -> None:
    async def go() -> None:
        stream = sandbox.exec_stream("echo a; sleep 0.3; echo b")
        first = await stream.__anext__()
        assert first.data.startswith("a")
        await stream.aclose()  # stop reading mid-stream
        assert (await sandbox.exec("echo ok")).output == "ok\n"
        chunks = [c async for c in sandbox.exec_stream("echo s")]
        assert chunks[-1].exit_code == 0
        assert (await sandbox.exec("echo again")).output == "again\n"

    run(go())


def test_a_connection_closed_by_the_runner_is_replaced(sandbox: Any) -> None:
    run(sandbox.exec("true"))
    assert len(sandbox._idle) == 1
    # a frame over the limit: the runner answers with an error and closes the connection
    sock = sandbox._idle[0].sock
    sock.sendall(b"\xff\xff\xff\xff")
    assert select.select([sock], [], [], 5)[0]  # its reply and EOF arrive while idle
    assert run(sandbox.exec("echo fresh")).output == "fresh\n"


def test_requests_work_from_successive_event_loops(sandbox: Any) -> None:
    for i in range(3):
        assert run(sandbox.exec(f"echo {i}")).output == f"{i}\n"
