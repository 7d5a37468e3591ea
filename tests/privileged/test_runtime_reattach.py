"""A restarted daemon finds its sandboxes wherever they are: under a long data_dir (the
runner's socket path does not fit a Unix socket address) and from a runtime whose cgroup
parent differs from the one that created them."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from sandkasten.runtime.linux.state import proc_start_time
from tests.support.sandbox import busybox_layer, run, spec_for  # noqa: F401

pytestmark = pytest.mark.privileged


def _runtime(data: Path, parent: str) -> Any:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, overlayfs mounts and cgroups")
    from sandkasten.runtime.linux import LinuxRuntime

    return LinuxRuntime(data, cgroup_parent=parent)


def _remove_parent(rt: Any) -> None:
    """rmdir the runtime's (empty) cgroup parent directories."""
    mgr = rt.cgroups
    dirs = list(getattr(mgr, "parents", {}).values()) or [getattr(mgr, "path", None)]
    for d in {os.path.realpath(d) for d in dirs if d is not None}:
        if os.path.isdir(d):
            os.rmdir(d)


def _cgroup_dirs(rt: Any, sid: str) -> list[str]:
    cg = rt.cgroups.open(rt.cgroup_name(sid))
    if cg is None:
        return []
    dirs = list(getattr(cg, "dirs", {}).values()) or [cg.path]  # v1: per controller
    return [str(d) for d in dirs if os.path.isdir(d)]


# Runs as an unprivileged user: reach the socket through the same /proc/self/fd name the
# daemon uses. Prints the errno name it fails with, or "connected".
NOBODY_CONNECT = """
import errno, os, socket, sys
d, name = os.path.split(sys.argv[1])
try:
    fd = os.open(d, os.O_PATH | os.O_DIRECTORY)
    s = socket.socket(socket.AF_UNIX)
    s.connect(f"/proc/self/fd/{fd}/{name}")
    print("connected")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


def test_long_data_dir(busybox_layer: Path, tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(data)) > 120
    rt = _runtime(data, f"fixes-long-{uuid.uuid4().hex[:8]}")
    sid = f"t{uuid.uuid4().hex[:10]}"
    rt2 = None
    try:
        sb = run(rt.create(spec_for(busybox_layer, sid)))
        sock = rt.paths(sid).socket
        assert len(os.fsencode(str(sock))) > 108  # too long for sockaddr_un by name
        assert run(sb.exec("cd /tmp; echo hi")).output == "hi\n"
        # reachable only by root: a 0600 root socket in a 0700 root directory
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and st.st_uid == 0
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
        out = subprocess.run(["/usr/bin/python3", "-c", NOBODY_CONNECT, str(sock)],
                             user=65534, group=65534, capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == "EACCES"
        # a restarted daemon attaches through the long path too
        rt.close()
        rt2 = _runtime(data, f"fixes-long2-{uuid.uuid4().hex[:8]}")
        again = run(rt2.attach(sid))
        assert again is not None
        assert run(again.exec("pwd")).output == "/tmp\n"
        run(again.destroy())
        assert not rt.paths(sid).root.exists()
    finally:
        rt.destroy_sync(sid)
        rt.close()
        _remove_parent(rt)
        if rt2 is not None:
            rt2.close()
            _remove_parent(rt2)


def test_attach_from_a_runtime_in_another_cgroup(busybox_layer: Path,  # noqa: F811
                                                 tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = _runtime(data, f"fixes-old-{uuid.uuid4().hex[:8]}")
    new = None
    sid = f"t{uuid.uuid4().hex[:10]}"
    try:
        sb = run(old.create(spec_for(busybox_layer, sid, mem_limit_mb=64, pids_limit=50)))
        run(sb.exec("sleep 300 &"))
        dirs = _cgroup_dirs(old, sid)
        assert dirs
        old.close()
        # the daemon restarts elsewhere: its cgroup parent is not the old one
        new = _runtime(data, f"fixes-new-{uuid.uuid4().hex[:8]}")
        assert new.cgroups.open(new.cgroup_name(sid)) is None  # not under the new parent
        again = run(new.attach(sid))
        assert again is not None
        s = run(again.stats())
        assert s.memory_limit == 64 << 20
        assert s.pids >= 3  # the runner, its shell and the sleep
        pid = again.pid
        run(new.cleanup(sid))  # destroy through the recorded paths
        assert proc_start_time(pid) is None
        assert [d for d in dirs if os.path.isdir(d)] == []
        assert not (data / "sessions" / sid).exists()
    finally:
        old.destroy_sync(sid)
        old.close()
        _remove_parent(old)
        if new is not None:
            new.destroy_sync(sid)
            new.close()
            _remove_parent(new)


@pytest.mark.parametrize("paths", [
    {"": "/etc"},
    {"memory": "/etc/x"},
    {"memory": "/sys/fs/cgroup/memory/../../../etc/sk-x"},
])
def test_recorded_cgroup_paths_outside_the_hierarchy_are_ignored(tmp_path: Path,
                                                                 paths: dict[str, str]) -> None:
    rt = _runtime(tmp_path / "data", f"fixes-bad-{uuid.uuid4().hex[:8]}")
    try:
        assert rt.cgroups.open_paths("sk-x", paths) is None
    finally:
        rt.close()
        _remove_parent(rt)
