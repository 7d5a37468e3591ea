"""Sandboxes in the daemon's user namespace (``security.user_namespace``), on a real kernel.

Root inside is host uid BASE, the sandbox user is BASE+1000; image layers and the workspace
are idmapped, so the store stays host root's and a workspace keeps disk uid 1000 in
either mode. Each test compares what the sandbox sees with what the host sees.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandkasten.runtime.base import SessionSpec
from sandkasten.runtime.linux import LinuxRuntime, LinuxSandbox, userns
from sandkasten.runtime.linux.errors import SessionSetupError
from tests.support.sandbox import busybox_layer, debian_layer, run, spec_for  # noqa: F401

BASE = userns.DEFAULT_BASE
CGROUP_PARENT = "userns-tests"
ALL_CAPS = "000001ffffffffff"


def _runtime(data: Path, mode: str) -> LinuxRuntime:
    rt = LinuxRuntime(data, cgroup_parent=CGROUP_PARENT, user_namespace=mode)  # type: ignore[arg-type]
    rt.start()
    return rt


def _close(rt: LinuxRuntime) -> None:
    for sid in rt.list_sessions():
        rt.destroy_sync(sid)
    rt.close()


@pytest.fixture(scope="module")
def rt_on(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinuxRuntime]:
    rt = LinuxRuntime(tmp_path_factory.mktemp("userns-on"), cgroup_parent=CGROUP_PARENT,
                      user_namespace="auto")
    status = rt.user_namespace_status()
    if not status["active"]:
        rt.close()
        pytest.skip(f"no user namespace with idmapped layers here: {status['reason']}")
    try:
        yield rt
    finally:
        _close(rt)


@pytest.fixture(scope="module")
def rt_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinuxRuntime]:
    rt = _runtime(tmp_path_factory.mktemp("userns-off"), "off")
    try:
        yield rt
    finally:
        _close(rt)


@pytest.fixture(scope="module")
def layers(busybox_layer: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:  # noqa: F811
    """busybox, a middle layer, and a top layer with an overlay whiteout, an opaque dir,
    a world-writable dir and a setuid-root busybox: all owned by host root on disk."""
    mid = tmp_path_factory.mktemp("mid")
    (mid / "data").mkdir()
    (mid / "data/a").write_text("a\n")
    (mid / "etc").mkdir()
    (mid / "etc/motd").write_text("hello\n")
    top = tmp_path_factory.mktemp("top")
    (top / "etc").mkdir()
    os.mknod(top / "etc/motd", stat.S_IFCHR | 0o600, 0)  # overlayfs whiteout
    (top / "data").mkdir()
    os.setxattr(top / "data", "trusted.overlay.opaque", b"y")
    (top / "data/c").write_text("c\n")
    (top / "shared").mkdir()
    os.chmod(top / "shared", 0o1777)
    (top / "usr/local/bin").mkdir(parents=True)
    shutil.copy2(busybox_layer / "bin/busybox", top / "usr/local/bin/busybox")
    os.chmod(top / "usr/local/bin/busybox", 0o4755)
    for layer in (mid, top):
        os.chmod(layer, 0o755)  # as the store leaves a layer's root (mktemp made it 0700)
    return [busybox_layer, mid, top]


@pytest.fixture
def sb(rt_on: LinuxRuntime, layers: list[Path]) -> Iterator[LinuxSandbox]:
    s = run(rt_on.create(_spec(layers)))
    try:
        yield s
    finally:
        run(s.destroy())


def _spec(layers: list[Path], **kw: Any) -> SessionSpec:
    return dataclasses.replace(spec_for(layers[0], **kw), layer_paths=layers)


def sh(s: LinuxSandbox, cmd: str) -> str:
    r = run(s.exec(cmd))
    assert r.exit_code == 0, (cmd, r.output)
    return r.output


def test_ids_are_mapped(sb: LinuxSandbox) -> None:
    assert sh(sb, "cat /proc/self/uid_map").split() == ["0", str(BASE), "65536"]
    assert sh(sb, "cat /proc/self/gid_map").split() == ["0", str(BASE), "65536"]
    assert sh(sb, "id").startswith("uid=1000(sandbox) gid=1000(sandbox)")
    # the image (host root's on disk) is root's inside, on every layer
    out = sh(sb, "stat -c '%u:%g %n' / /etc/passwd /etc/hosts /bin/busybox /data/c /tmp /dev")
    assert [line.split()[0] for line in out.splitlines()] == ["0:0"] * 7, out
    # device nodes are host root's: nobody inside, and still usable
    assert sh(sb, "stat -c %u /dev/null; echo x > /dev/null; head -c 4 /dev/zero | wc -c"
              ).split() == ["65534", "4"]


def test_overlay_whiteouts_and_opaque_dirs_work_through_idmapped_layers(sb: LinuxSandbox
                                                                       ) -> None:
    assert sh(sb, "ls /data").split() == ["c"]  # opaque: the middle layer's a is hidden
    assert run(sb.exec("test -e /etc/motd")).exit_code == 1  # whited out


def test_setuid_root_binary_gives_nothing(sb: LinuxSandbox) -> None:
    assert sh(sb, "stat -c '%u %a' /usr/local/bin/busybox").split() == ["0", "4755"]
    out = sh(sb, "/usr/local/bin/busybox id")
    assert out.startswith("uid=1000(sandbox)") and "euid" not in out, out


def test_files_written_inside_have_unprivileged_host_owners(rt_on: LinuxRuntime,
                                                            sb: LinuxSandbox) -> None:
    sh(sb, "echo t > /tmp/t && echo u > /shared/u && echo w > /workspace/w")
    host_tmp = os.stat(f"/proc/{sb.pid}/root/tmp/t")
    assert (host_tmp.st_uid, host_tmp.st_gid) == (BASE + 1000, BASE + 1000)
    paths = rt_on.paths(sb.id)
    upper = os.stat(paths.upper / "shared/u")
    assert (upper.st_uid, upper.st_gid) == (BASE + 1000, BASE + 1000)
    # the copied-up dir and the upper root are the sandbox root's, not host root's
    assert os.stat(paths.upper / "shared").st_uid == BASE
    assert os.stat(paths.upper).st_uid == BASE
    assert stat.S_IMODE(os.stat(paths.upper).st_mode) == 0o755
    # the workspace keeps disk uid 1000: it is usable with and without a user namespace
    ws = os.stat(paths.workspace / "w")
    assert (ws.st_uid, ws.st_gid) == (1000, 1000)

def test_layer_store_stays_host_roots(sb: LinuxSandbox, layers: list[Path]) -> None:
    sh(sb, "echo u > /shared/u")
    assert os.stat(layers[2] / "shared").st_uid == 0
    assert not (layers[2] / "shared/u").exists()
    assert os.stat(layers[0] / "etc/passwd").st_uid == 0


def test_pid1_is_root_of_the_user_namespace_only(sb: LinuxSandbox) -> None:
    status = Path(f"/proc/{sb.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["Uid"].split() == [str(BASE)] * 4
    assert fields["Gid"].split() == [str(BASE)] * 4
    assert fields["CapEff"].strip() == ALL_CAPS  # every capability, of its own namespace
    assert os.readlink(f"/proc/{sb.pid}/ns/user") != os.readlink("/proc/self/ns/user")
    # a user command: no capability at all
    assert sh(sb, "grep CapEff /proc/self/status").split()[1] == "0" * 16


def _as_userns_root(pid: int, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in the sandbox as root of its user namespace with every capability
    there, and no seccomp filter: what a root escape inside the sandbox would hold."""
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-C", "-U", "-S", "0",
         "-G", "0", "-r", "-w", "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=30, check=False)


_DENIED = "(?i)operation not permitted|permission denied"
_READONLY = "Read-only file system"


def test_root_in_the_user_namespace_has_every_capability_there(sb: LinuxSandbox) -> None:
    out = _as_userns_root(sb.pid, "id -u; grep CapEff /proc/self/status").stdout.split()
    assert out == ["0", "CapEff:", ALL_CAPS]


@pytest.mark.parametrize("script, error", [
    ("mount -t tmpfs t /tmp", _DENIED),
    ("mount -o remount,ro /", _DENIED),
    ("umount -l /proc", _DENIED),
    ("mount --bind /tmp /workspace", _DENIED),
    ("echo 1 > /proc/sys/kernel/ns_last_pid", _READONLY),
    ("hostname evil", _DENIED),
    ("mknod /tmp/sda b 8 0", _DENIED),
    ("insmod /bin/busybox", _DENIED),
])
def test_root_in_the_user_namespace_cannot_act_on_the_host(sb: LinuxSandbox, script: str,
                                                          error: str) -> None:
    if script.startswith("insmod") and not os.path.exists("/proc/modules"):
        pytest.skip("this kernel has no module support (no /proc/modules)")
    res = _as_userns_root(sb.pid, f"({script}) 2>&1; echo rc=$?")
    assert re.search(error, res.stdout) and "rc=0" not in res.stdout, (res.stdout, res.stderr)
    assert sh(sb, "hostname").strip() != "evil"


def test_persistent_workspace_works_in_both_modes(rt_on: LinuxRuntime, rt_off: LinuxRuntime,
                                                 layers: list[Path], tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    for rt, name in ((rt_off, "from-off"), (rt_on, "from-on"), (rt_off, "again-off")):
        s = run(rt.create(_spec(layers, workspace_dir=ws)))
        try:
            sh(s, f"echo {name} > /workspace/{name}; cat /workspace/*")
            assert sh(s, "stat -c %u /workspace").strip() == "1000"
        finally:
            run(s.destroy())
        st = os.stat(ws / name)
        assert (st.st_uid, st.st_gid) == (1000, 1000), name
    assert sorted(p.name for p in ws.iterdir()) == ["again-off", "from-off", "from-on"]


def test_off_mode_is_unchanged(rt_off: LinuxRuntime, layers: list[Path]) -> None:
    assert rt_off.user_namespace_status() == {"mode": "off", "active": False, "reason": "off"}
    s = run(rt_off.create(_spec(layers)))
    try:
        assert sh(s, "cat /proc/self/uid_map").split() == ["0", "0", "4294967295"]
        assert sh(s, "stat -c %u /dev/null /etc/hosts").split() == ["0", "0"]
        sh(s, "echo u > /shared/u")
        assert os.stat(rt_off.paths(s.id).upper / "shared/u").st_uid == 1000
        assert not (rt_off.paths(s.id).root / "lower").exists()
    finally:
        run(s.destroy())


@pytest.fixture
def overlay_data_dir() -> Iterator[Path]:
    """A data directory on overlayfs, which cannot be idmapped: the probe must fail."""
    tmp = Path(tempfile.mkdtemp(prefix="userns-probe-test-"))
    for d in ("l", "u", "w", "m"):
        (tmp / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={tmp}/l,upperdir={tmp}/u,workdir={tmp}/w", str(tmp / "m")],
                   check=True)
    try:
        yield tmp / "m"
    finally:
        subprocess.run(["umount", str(tmp / "m")], check=True)
        shutil.rmtree(tmp)


def test_on_refuses_to_start_where_the_probe_fails(overlay_data_dir: Path) -> None:
    rt = LinuxRuntime(overlay_data_dir, cgroup_parent=CGROUP_PARENT, user_namespace="on")
    try:
        with pytest.raises(SessionSetupError) as ei:
            rt.start()
        msg = str(ei.value)
        assert msg.startswith("security.user_namespace is on, but idmapped layers do not "
                              f"work on {overlay_data_dir}: its filesystem does not support "
                              "idmapped mounts"), msg
        assert "\n" not in msg and "auto" in (ei.value.hint or "")
    finally:
        rt.close()
    # nothing of the probe is left: no scratch dir, no mount
    assert [p.name for p in overlay_data_dir.iterdir()] == ["sessions"]
    assert str(overlay_data_dir) + "/" not in Path("/proc/self/mountinfo").read_text()


def test_auto_falls_back_and_says_why(overlay_data_dir: Path) -> None:
    rt = LinuxRuntime(overlay_data_dir, cgroup_parent=CGROUP_PARENT, user_namespace="auto")
    try:
        status = rt.user_namespace_status()
    finally:
        rt.close()
    assert status["active"] is False and status["mode"] == "auto"
    assert "does not support idmapped mounts" in status["reason"]


def test_probe_failure_on_a_bad_mapping() -> None:
    fd, reason = userns.setup("on", 2**32 - 10, "/tmp")
    assert fd is None and reason is not None
    assert reason.startswith("cannot create a user namespace"), reason


def test_debian_image(rt_on: LinuxRuntime, debian_layer: Path) -> None:  # noqa: F811
    s = run(rt_on.create(spec_for(debian_layer)))
    try:
        out = sh(s, "python3 -c 'import os, pwd; st = os.stat(\"/usr/bin/passwd\"); "
                    "print(os.getuid(), pwd.getpwuid(st.st_uid).pw_name, oct(st.st_mode))'")
        assert out.split() == ["1000", "root", "0o104755"]
        # a setuid-root program runs as the sandbox user (no_new_privs), and its root
        # would be host uid BASE anyway
        r = run(s.exec("su -c id root </dev/null"))
        assert r.exit_code != 0 and "uid=0" not in r.output
        assert sh(s, "bash -c 'echo $EUID'").strip() == "1000"
    finally:
        run(s.destroy())


def test_a_workspace_that_cannot_be_idmapped_is_refused_clearly(
        rt_on: LinuxRuntime, layers: list[Path], overlay_data_dir: Path) -> None:
    """A persistent workspace on a filesystem without idmapped mounts (here overlayfs)
    cannot keep its owners in the user namespace: the create fails naming the reason and
    the way out, and leaves nothing behind."""
    ws = overlay_data_dir / "ws"
    ws.mkdir()
    spec = _spec(layers, workspace_dir=ws)
    with pytest.raises(SessionSetupError, match=r"cannot be idmapped.*user_namespace: off"):
        run(rt_on.create(spec))
    assert not (rt_on.sessions_dir / spec.id).exists()
    assert spec.id not in Path("/proc/self/mountinfo").read_text()
