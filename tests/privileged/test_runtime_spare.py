"""The spare PID 1: forked ahead of the next create, used by it, never leaked."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.sandbox import busybox_layer, linux_runtime, run, spec_for  # noqa: F401

pytestmark = pytest.mark.privileged


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(x) for x in f.read().split()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _spare(rt: Any, sessions: set[int], timeout: float = 5.0) -> int:
    """The fork server's child that is no session's PID 1 (waits for it)."""
    fs = rt._fs().proc.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spares = {p for p in _children(fs) - sessions if _alive(p)}
        if len(spares) == 1:
            return spares.pop()
        time.sleep(0.02)
    kids = {p: _alive(p) for p in _children(fs)}
    raise AssertionError(f"not one spare PID 1 under the fork server {fs}: children "
                         f"{kids}, sessions {sessions}")


def test_the_next_create_takes_the_spare(linux_runtime: Any,  # noqa: F811
                                         busybox_layer: Path) -> None:  # noqa: F811
    first = run(linux_runtime.create(spec_for(busybox_layer)))
    try:
        run(first.exec("true"))  # its first request is when the next spare is forked
        spare = _spare(linux_runtime, {first.pid})
        with open(f"/proc/{spare}/status") as f:
            nspid = next(ln for ln in f if ln.startswith("NSpid:")).split()[1:]
        assert nspid[-1] == "1"  # already PID 1 of a pid namespace of its own
        # it waits on CPU time nobody else wants (set by the fork server right after the
        # fork, which the child list may show a moment earlier)...
        deadline = time.monotonic() + 5
        while os.sched_getscheduler(spare) != os.SCHED_IDLE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.sched_getscheduler(spare) == os.SCHED_IDLE
        spec = spec_for(busybox_layer, mem_limit_mb=64)
        second = run(linux_runtime.create(spec))
        try:
            assert second.pid == spare
            r = run(second.exec("hostname; cat /proc/self/cgroup; echo $$"))
            # ...and its session, the shell included, runs in the normal class
            assert os.sched_getscheduler(second.pid) == os.SCHED_OTHER
            with open(f"/proc/{second.pid}/task/{second.pid}/children") as f:
                children = [int(p) for p in f.read().split()]
            assert children
            assert all(os.sched_getscheduler(p) == os.SCHED_OTHER for p in children)
            assert r.output.splitlines()[0] == spec.id.lower()
            with open(f"/proc/{second.pid}/cgroup") as f:
                assert linux_runtime.cgroup_name(spec.id) in f.read()
        finally:
            run(second.destroy())
    finally:
        run(first.destroy())


def test_a_host_mount_made_after_the_spare_reaches_its_session(
        linux_runtime: Any, busybox_layer: Path, tmp_path: Path) -> None:  # noqa: F811
    """A spare makes its session's mount namespace only when it is assigned: a disk
    mounted on the host while the spare waited (here a bind mount holding a persistent
    workspace) is seen by the session, on hosts whose mounts are private as on those
    where they are shared; nothing of the session's comes back to the host."""
    disk = tmp_path / "disk"
    disk.mkdir()
    src = tmp_path / "src"
    (src / "ws").mkdir(parents=True)
    (src / "ws" / "hello").write_text("from the new disk\n")
    first = run(linux_runtime.create(spec_for(busybox_layer)))
    try:
        run(first.exec("true"))
        spare = _spare(linux_runtime, {first.pid})
        subprocess.run(["mount", "--bind", str(src), str(disk)], check=True)
        try:
            second = run(linux_runtime.create(spec_for(busybox_layer,
                                                       workspace_dir=disk / "ws")))
            try:
                assert second.pid == spare
                r = run(second.exec("cat /workspace/hello; touch /workspace/back"))
                assert r.output == "from the new disk\n"
            finally:
                run(second.destroy())
            assert (src / "ws" / "back").exists()
            with open("/proc/self/mountinfo") as f:  # nothing of the session's came back
                assert [ln for ln in f if "overlay" in ln and second.id in ln] == []
        finally:
            subprocess.run(["umount", str(disk)], check=False)
    finally:
        run(first.destroy())


def test_a_dead_spare_is_replaced(linux_runtime: Any, busybox_layer: Path) -> None:  # noqa: F811
    first = run(linux_runtime.create(spec_for(busybox_layer)))
    try:
        run(first.exec("true"))
        spare = _spare(linux_runtime, {first.pid})
        os.kill(spare, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(spare) and time.monotonic() < deadline:
            time.sleep(0.01)
        second = run(linux_runtime.create(spec_for(busybox_layer)))
        try:
            assert second.pid != spare
            assert run(second.exec("echo ok")).output == "ok\n"
            assert _spare(linux_runtime, {first.pid, second.pid}) not in (spare, second.pid)
        finally:
            run(second.destroy())
    finally:
        run(first.destroy())


def test_the_spare_ends_with_the_fork_server(tmp_path: Path, busybox_layer: Path) -> None:  # noqa: F811
    from sandkasten.runtime.linux import LinuxRuntime

    rt = LinuxRuntime(tmp_path / "data", cgroup_parent=f"sk-spare-{os.getpid()}")
    try:
        spare = _spare(rt, set())  # the first one is forked after a moment of idleness
    finally:
        rt.close()
        mgr: Any = rt.cgroups
        for d in {*getattr(mgr, "parents", {}).values(), getattr(mgr, "path", None)} - {None}:
            os.rmdir(d)
    deadline = time.monotonic() + 5
    while _alive(spare) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(spare)


def test_sessions_without_requests_do_not_pile_up_fds(linux_runtime: Any,  # noqa: F811
                                                      busybox_layer: Path) -> None:  # noqa: F811
    """The fork server watches a ready PID 1 until its first request (to fork the next
    spare then), but only a bounded number of them: a pool of sandboxes that never get a
    request costs it no file descriptors beyond that."""
    from sandkasten.runtime.linux import forkserver

    fs = linux_runtime._fs().proc.pid
    before = len(os.listdir(f"/proc/{fs}/fd"))
    made = []
    try:
        for _ in range(forkserver.STARTED_MAX + 8):
            made.append(run(linux_runtime.create(spec_for(busybox_layer))))
        grown = len(os.listdir(f"/proc/{fs}/fd")) - before
        assert grown <= forkserver.STARTED_MAX + 4, grown  # + the spare's two pipes
        last = run(linux_runtime.create(spec_for(busybox_layer)))
        made.append(last)
        assert run(last.exec("echo still fine")).output == "still fine\n"
        assert run(made[-2].exec("echo me too")).output == "me too\n"
    finally:
        for sb in made:
            run(sb.destroy())
