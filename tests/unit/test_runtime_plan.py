"""The session plan as data: order, options and limits, without root."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandkasten.runtime.base import SessionSpec
from sandkasten.runtime.linux import namespaces as ns
from sandkasten.runtime.linux import plan as pl
from sandkasten.runtime.linux.errors import ImageLayoutError

PATHS = pl.SessionPaths(Path("/data/sessions/s1"))


def spec(**kw: object) -> SessionSpec:
    base: dict[str, object] = {"id": "s1", "image": "img",
                               "layer_paths": [Path("/l/a"), Path("/l/b")]}
    base.update(kw)
    return SessionSpec(**base)  # type: ignore[arg-type]


def kinds(ops: list[pl.Op]) -> list[str]:
    return [type(o).__name__ for o in ops]


def test_order_of_the_stages() -> None:
    ops = pl.plan_session(spec(), PATHS, "sk-s1")
    k = kinds(ops)
    # what a spare PID 1 does before any request is the same for every session; then the
    # session's: the cgroup joined before the cgroup namespace exists, private before any
    # mount, the socket bound on the host
    assert ops[:4] == [pl.ForkPid1(), *pl.spare_plan(), pl.Assign()]
    assert k[4:8] == ["JoinCgroup", "Unshare", "MakePrivate", "Listen"]
    # the mount namespace is the session's: a copy of the host's mounts at assignment
    assert ops[5] == pl.Unshare(ns.CLONE_NEWNS | ns.CLONE_NEWCGROUP)
    assert ops[7] == pl.Listen("/data/sessions/s1/runner.sock")
    # host paths used only before pivot_root; everything after resolves inside the root
    assert k.index("MountOverlay") < k.index("OpenBindSource") < k.index("PivotRoot")
    after = ops[k.index("PivotRoot") + 1:]
    assert all(not isinstance(o, pl.MountOverlay | pl.OpenBindSource) for o in after)
    mounts = {o.target: o for o in after if isinstance(o, pl.Mount)}
    assert set(mounts) == {"/proc", "/dev", "/dev/pts", "/dev/shm", "/tmp"}
    # /dev/null exists before it is used to mask /proc files
    first_mask = k.index("MaskFile")
    assert any(isinstance(o, pl.MakeDevice) and o.path == "/dev/null"
               for o in ops[:first_mask])
    assert ops[k.index("BindFd")] == pl.BindFd("workspace", "/workspace")
    assert "RemountReadonly" not in k


def test_namespaces_and_hostname() -> None:
    ops = pl.plan_session(spec(id="Sess_ABC.1"), PATHS, None)
    flags = 0
    for o in ops:
        if isinstance(o, pl.Unshare):
            flags |= o.flags
    for flag in (ns.CLONE_NEWNS, ns.CLONE_NEWNET, ns.CLONE_NEWUTS, ns.CLONE_NEWIPC,
                 ns.CLONE_NEWCGROUP):
        assert flags & flag
    # the pid namespace is made by ForkPid1 (unshare would put the *next* child in it)
    assert not flags & (ns.CLONE_NEWUSER | ns.CLONE_NEWPID)
    # the spare's part holds no session's data
    assert pl.spare_plan() == [pl.Unshare(pl.EARLY_NS_FLAGS), pl.LoopbackUp()]
    assert not pl.EARLY_NS_FLAGS & (ns.CLONE_NEWCGROUP | ns.CLONE_NEWNS)
    assert "JoinCgroup" not in kinds(ops)
    assert pl.SetHostname("sess-abc-1") in ops
    assert pl.WriteFile("/etc/hostname", "sess-abc-1\n") in ops
    hosts = next(o for o in ops if isinstance(o, pl.WriteFile) and o.path == "/etc/hosts")
    assert "127.0.1.1\tsess-abc-1" in hosts.content


@pytest.mark.parametrize("session_id, expected", [
    ("abc", "abc"), ("A_B", "a-b"), ("---", "sandbox"), ("x" * 80, "x" * 63),
])
def test_hostname_for(session_id: str, expected: str) -> None:
    assert pl.hostname_for(session_id) == expected


def test_readonly_rootfs_remounts_last() -> None:
    ops = pl.plan_session(spec(readonly_rootfs=True), PATHS, None)
    assert ops[-1] == pl.RemountReadonly("/")
    # the generated /etc files are written before the root turns read-only
    assert kinds(ops).index("WriteFile") < len(ops) - 1


def test_persistent_workspace_is_the_bind_source() -> None:
    ops = pl.plan_session(spec(workspace_dir=Path("/data/workspaces/w1")), PATHS, None)
    assert pl.OpenBindSource("workspace", "/data/workspaces/w1") in ops


def test_overlay_lowerdir_is_top_first() -> None:
    opts = pl.overlay_options([Path("/l/bottom"), Path("/l/top")], Path("/u"), Path("/w"))
    assert opts == "lowerdir=/l/top:/l/bottom,upperdir=/u,workdir=/w"


@pytest.mark.parametrize("layers, match", [
    ([], "at least one layer"),
    ([Path("/l/a:b")], "not usable"),
    ([Path("/l/a,b")], "not usable"),
    ([Path(f"/data/layers/{i:064x}") for i in range(80)], "flatten"),
])
def test_overlay_options_refused(layers: list[Path], match: str) -> None:
    with pytest.raises(ImageLayoutError, match=match):
        pl.overlay_options(layers, Path("/u"), Path("/w"))


BASE = 0x70000000


def test_without_user_namespace_nothing_is_idmapped_or_chowned() -> None:
    ops = pl.plan_session(spec(), PATHS, None)
    k = kinds(ops)
    assert not {"IdmapMount", "PrepareUpper", "EnterUserns"} & set(k)
    assert pl.OpenBindSource("workspace", "/data/sessions/s1/workspace") in ops
    assert all(getattr(o, "owner", 0) == 0 for o in ops)
    overlay = next(o for o in ops if isinstance(o, pl.MountOverlay))
    assert overlay.options.startswith("lowerdir=/l/b:/l/a,")


def test_user_namespace_plan() -> None:
    ops = pl.plan_session(spec(readonly_rootfs=True), PATHS, "sk-s1", userns_base=BASE)
    k = kinds(ops)
    # each layer idmapped onto its own mount point, then the overlay over those
    assert [o for o in ops if isinstance(o, pl.IdmapMount)] == [
        pl.IdmapMount("/l/a", "/data/sessions/s1/lower/0"),
        pl.IdmapMount("/l/b", "/data/sessions/s1/lower/1")]
    overlay = next(o for o in ops if isinstance(o, pl.MountOverlay))
    assert overlay.options.startswith(
        "lowerdir=/data/sessions/s1/lower/1:/data/sessions/s1/lower/0,")
    assert k.index("IdmapMount") < k.index("PrepareUpper") < k.index("MountOverlay")
    assert pl.PrepareUpper("/data/sessions/s1/upper", "/l/b", BASE) in ops
    assert pl.OpenBindSource("workspace", "/data/sessions/s1/workspace", idmap=True) in ops
    # PID 1 joins the user namespace after the last mount, read-only remount included
    assert k[-2:] == ["RemountReadonly", "EnterUserns"]
    # what setup creates belongs to root inside (host uid BASE)
    for o in ops:
        if isinstance(o, pl.WriteFile | pl.EnsureUser | pl.Symlink | pl.BindFd | pl.Mount):
            assert o.owner == BASE, o
    tmpfs = {o.target: o.data for o in ops if isinstance(o, pl.Mount)}
    for target in ("/dev", "/dev/shm", "/tmp"):
        assert f"uid={BASE},gid={BASE}" in str(tmpfs[target]), target
    # device nodes stay host root's (shown as nobody inside)
    assert all(not hasattr(o, "owner") for o in ops if isinstance(o, pl.MakeDevice))
