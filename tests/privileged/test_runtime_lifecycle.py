"""Session lifecycle on real kernels: options, failures, concurrency."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sandkasten.runtime.linux.errors import SessionSetupError
from sandkasten.runtime.linux.sandbox import RunnerError
from tests.support.sandbox import busybox_layer, linux_runtime, run, spec_for  # noqa: F401

pytestmark = pytest.mark.privileged


def _leftovers(rt: Any, session_id: str) -> list[str]:
    found = []
    if (rt.sessions_dir / session_id).exists():
        found.append("session dir")
    if rt.cgroups.open(rt.cgroup_name(session_id)) is not None:
        found.append("cgroup")
    with open("/proc/self/mountinfo") as f:
        if session_id in f.read():
            found.append("mount")
    return found


def test_failed_setup_names_the_step_and_leaves_nothing(linux_runtime: Any,  # noqa: F811
                                                        tmp_path: Path) -> None:
    spec = spec_for(tmp_path / "no-such-layer", mem_limit_mb=64)
    with pytest.raises(SessionSetupError, match=r"MountOverlay|IdmapMount"):
        run(linux_runtime.create(spec))
    assert _leftovers(linux_runtime, spec.id) == []


def test_duplicate_session_id_is_refused(linux_runtime: Any, busybox_layer: Path) -> None:  # noqa: F811
    spec = spec_for(busybox_layer)
    sb = run(linux_runtime.create(spec))
    try:
        with pytest.raises(Exception, match="already exists"):
            run(linux_runtime.create(spec))
        assert run(sb.exec("echo still")).output == "still\n"
    finally:
        run(sb.destroy())


def test_readonly_rootfs(linux_runtime: Any, busybox_layer: Path) -> None:  # noqa: F811
    sb = run(linux_runtime.create(spec_for(busybox_layer, readonly_rootfs=True)))
    try:
        r = run(sb.exec("touch /etc/x 2>&1; echo rc=$?; touch /tmp/ok /workspace/ok && "
                        "echo writable; grep -c sandbox /etc/passwd"))
        assert "Read-only file system" in r.output and "rc=1" in r.output
        assert "writable" in r.output and r.output.endswith("1\n")
    finally:
        run(sb.destroy())


def test_persistent_workspace_outlives_the_session(linux_runtime: Any,  # noqa: F811
                                                   busybox_layer: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    sb = run(linux_runtime.create(spec_for(busybox_layer, workspace_dir=ws)))
    run(sb.exec("echo kept > note"))
    run(sb.destroy())
    assert (ws / "note").read_text() == "kept\n"
    assert ws.stat().st_uid == 1000
    sb = run(linux_runtime.create(spec_for(busybox_layer, workspace_dir=ws)))
    try:
        assert run(sb.exec("cat note")).output == "kept\n"
    finally:
        run(sb.destroy())


def test_shell_prefer(linux_runtime: Any, busybox_layer: Path) -> None:  # noqa: F811
    sb = run(linux_runtime.create(spec_for(busybox_layer, shell_prefer=["zsh", "ash"])))
    try:
        run(sb.exec("true"))
        assert run(sb.ping()).shell == "/bin/ash"
    finally:
        run(sb.destroy())
    with pytest.raises(RunnerError, match="none of the shells"):
        sb = run(linux_runtime.create(spec_for(busybox_layer, shell_prefer=["zsh"])))
        try:
            run(sb.exec("true"))
        finally:
            run(sb.destroy())


def test_concurrent_creates_and_requests(linux_runtime: Any, busybox_layer: Path) -> None:  # noqa: F811
    async def scenario() -> None:
        sbs = await asyncio.gather(*(linux_runtime.create(spec_for(busybox_layer))
                                     for _ in range(4)))
        try:
            assert len({sb.pid for sb in sbs}) == 4
            sb = sbs[0]
            # a long exec on the shell blocks neither file requests nor split execs; a
            # split exec runs in the state the last completed exec left
            await sb.exec("cd /bin; export MARK=before")
            slow = asyncio.create_task(sb.exec("sleep 1; cd /tmp; export MARK=after; echo slow"))
            await asyncio.sleep(0.1)
            t0 = asyncio.get_running_loop().time()
            await sb.write_file("/workspace/f", b"x")
            assert await sb.read_file("/workspace/f") == (b"x", False)
            split = await sb.exec_split('echo "$PWD $MARK"')
            assert asyncio.get_running_loop().time() - t0 < 0.8
            assert (split.stdout, split.cwd) == ("/bin before\n", "/bin")
            assert (await slow).output == "slow\n"
            assert (await sb.exec_split('echo "$PWD $MARK"')).stdout == "/tmp after\n"
            outs = await asyncio.gather(*(s.exec(f"echo {i}") for i, s in enumerate(sbs)))
            assert [o.output for o in outs] == [f"{i}\n" for i in range(4)]
        finally:
            await asyncio.gather(*(s.destroy() for s in sbs))
        for s in sbs:
            assert _leftovers(linux_runtime, s.id) == []

    run(scenario())


def test_shutdown_request_ends_the_sandbox(linux_runtime: Any, busybox_layer: Path) -> None:  # noqa: F811
    import time

    from runner import protocol as p
    from sandkasten.runtime.linux import proc_start_time

    sb = run(linux_runtime.create(spec_for(busybox_layer)))
    run(sb.exec("sleep 100 &"))
    start = proc_start_time(sb.pid)
    assert isinstance(run(sb.request(p.Shutdown())), p.Ok)
    deadline = time.monotonic() + 5
    while proc_start_time(sb.pid) == start and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc_start_time(sb.pid) != start
    assert run(linux_runtime.attach(sb.id)) is None
    run(linux_runtime.cleanup(sb.id))
    assert _leftovers(linux_runtime, sb.id) == []
