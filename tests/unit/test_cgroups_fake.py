"""cgroup managers on a fake cgroupfs (tests/support/cgroupfs.py): which files are written,
in which order, and how each host layout is detected. No root needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandkasten.errors import CgroupsUnavailableError
from sandkasten.runtime.linux.cgroups import CgroupLimits, open_manager
from sandkasten.runtime.linux.cgroups.base import check_name
from sandkasten.runtime.linux.cgroups.fs import own_cgroups
from sandkasten.runtime.linux.cgroups.unlimited import UnlimitedManager
from sandkasten.runtime.linux.cgroups.v1 import V1Manager
from sandkasten.runtime.linux.cgroups.v2 import LEAF, V2Manager
from tests.support.cgroupfs import FakeCgroupFS

ALL = ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"]
LIMITS = CgroupLimits(cpu=0.5, memory_bytes=256 << 20, pids=64)
V1_HOST = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"]


@pytest.fixture
def fake(tmp_path: Path) -> FakeCgroupFS:
    root = tmp_path / "cgroup"
    root.mkdir()
    return FakeCgroupFS(root)


def written(fake: FakeCgroupFS, suffix: str) -> list[str]:
    return [v for p, v in fake.writes if p.endswith(suffix)]


# -- limits and names --------------------------------------------------------------------

@pytest.mark.parametrize(("cpu", "quota"), [(1.0, 100_000), (0.5, 50_000), (2.5, 250_000),
                                            (0.001, 1_000), (0.0001, 1_000), (None, None)])
def test_cpu_quota(cpu: float | None, quota: int | None) -> None:
    assert CgroupLimits(cpu=cpu).cpu_quota_us() == quota


@pytest.mark.parametrize("kwargs", [{"cpu": 0}, {"cpu": -1.0}, {"memory_bytes": 1000},
                                    {"pids": 0}])
def test_bad_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CgroupLimits(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 200, "a b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


@pytest.mark.parametrize(("text", "expected"), [
    ("0::/\n", {"": "/"}),
    ("0::/user.slice/u.service\n", {"": "/user.slice/u.service"}),
    ("4:memory:/a\n2:cpu,cpuacct:/b\n9:name=systemd:/c\n0::/\n",
     {"memory": "/a", "cpu": "/b", "cpuacct": "/b", "": "/"}),
])
def test_own_cgroups(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    f = tmp_path / "cgroup"
    f.write_text(text)
    assert own_cgroups(f) == expected


# -- v2 ----------------------------------------------------------------------------------

def test_v2_root_host(fake: FakeCgroupFS) -> None:
    psc = fake.make_v2(ALL)
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    assert isinstance(mgr, V2Manager) and mgr.version == 2
    assert mgr.controllers == {"cpu", "memory", "pids"}
    cg = mgr.create("s1", LIMITS)
    d = fake.root / "sk/s1"
    assert (d / "cpu.max").read_text() == "50000 100000\n"
    assert (d / "memory.max").read_text() == f"{256 << 20}\n"
    assert (d / "memory.swap.max").read_text() == "0\n"
    assert (d / "pids.max").read_text() == "64\n"
    assert ("sk/cgroup.subtree_control", "+cpu +memory +pids") in fake.writes
    assert mgr.list() == ["s1"] and mgr.open("s1") is not None and mgr.open("s2") is None
    cg.set_limits(CgroupLimits())
    assert (d / "cpu.max").read_text() == "max 100000\n"
    assert (d / "memory.max").read_text() == "max\n"
    assert (d / "pids.max").read_text() == "max\n"
    cg.remove()
    assert not d.exists() and mgr.list() == []


def test_v2_nested_delegated_moves_daemon_into_leaf(fake: FakeCgroupFS) -> None:
    own = "/system.slice/sandkasten.service"
    me, parent = os.getpid(), os.getppid()
    psc = fake.make_v2(ALL, own=own, own_procs=(me, parent))
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    base = fake.root / own.lstrip("/")
    assert mgr.controllers == {"cpu", "memory", "pids"}
    assert (base / "cgroup.procs").read_text() == ""
    assert sorted(map(int, (base / LEAF / "cgroup.procs").read_text().split())) == sorted(
        [me, parent])
    assert set((base / "cgroup.subtree_control").read_text().split()) == {"cpu", "memory",
                                                                         "pids"}
    cg = mgr.create("s1", LIMITS)
    assert (base / "sk/s1/pids.max").read_text() == "64\n"
    cg.remove()
    # Opening again from inside the leaf (a restart or a forked helper) finds the same base.
    psc.write_text(f"0::{own}/{LEAF}\n")
    again = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    assert isinstance(again, V2Manager) and again.path == base / "sk"


def test_v2_without_delegated_memory_refuses_with_the_seed_message(fake: FakeCgroupFS) -> None:
    psc = fake.make_v2(ALL, own="/user.slice/x.scope", delegated=["cpu", "pids"])
    with pytest.raises(CgroupsUnavailableError) as ei:
        open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    err = ei.value
    assert err.code == "cgroups_unavailable" and err.status == 503
    assert "cgroup v2 not mounted" in err.message and "[memory]" in err.message
    assert err.hint and "cgroup2fs" in err.hint and "kernelCommandLine" in err.hint
    mgr = open_manager(fake.root, "sk2", fs=fake, proc_self_cgroup=psc, allow_unlimited=True)
    assert mgr.missing == {"memory"}
    mgr.create("s1", LIMITS).remove()


def test_v2_stats(fake: FakeCgroupFS) -> None:
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=fake.make_v2(ALL))
    cg = mgr.create("s1", LIMITS)
    d = fake.root / "sk/s1"
    (d / "memory.current").write_text("12345\n")
    (d / "cpu.stat").write_text("usage_usec 777\nuser_usec 700\nnr_periods 9\n"
                                "nr_throttled 4\nthrottled_usec 3210\n")
    (d / "pids.current").write_text("3\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\n")
    s = cg.stats()
    assert (s.memory_bytes, s.memory_limit, s.cpu_usage_usec, s.pids, s.oom_kills) == (
        12345, 256 << 20, 777, 3, 2)
    assert (s.nr_throttled, s.throttled_usec) == (4, 3210)
    cg.set_limits(CgroupLimits())
    assert cg.stats().memory_limit is None


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"])


def test_v2_kill_uses_cgroup_kill(fake: FakeCgroupFS) -> None:
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=fake.make_v2(ALL))
    cg = mgr.create("s1", LIMITS)
    p = _sleeper()
    try:
        cg.add_process(p.pid)
        assert cg.procs() == [p.pid]
        cg.kill_all()
        assert ("sk/s1/cgroup.kill", "1") in fake.writes and cg.procs() == []
    finally:
        p.kill()
        p.wait()


def test_v2_kill_without_cgroup_kill_freezes_and_signals(fake: FakeCgroupFS) -> None:
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=fake.make_v2(ALL))
    cg = mgr.create("s1", LIMITS)
    (fake.root / "sk/s1/cgroup.kill").unlink()  # Linux < 5.14
    p = _sleeper()
    try:
        cg.add_process(p.pid)
        cg.kill_all(timeout=5)
        assert p.wait(timeout=5) == -9
        assert written(fake, "s1/cgroup.freeze") == ["1", "0"]
        cg.remove()
        assert not (fake.root / "sk/s1").exists()
    finally:
        p.kill()
        p.wait()


# -- v1 ----------------------------------------------------------------------------------

def test_v1_hybrid_host_like_this_one(fake: FakeCgroupFS) -> None:
    # memory/cpu/pids on v1; "unified" is cgroup2 with only hugetlb and must not be chosen.
    psc = fake.make_v1(V1_HOST, own={"memory": "/process_api/abc"}, unified=["hugetlb"])
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    assert isinstance(mgr, V1Manager) and mgr.version == 1
    assert mgr.controllers == {"cpu", "memory", "pids"}
    mgr.create("s1", LIMITS)
    mem = fake.root / "memory/process_api/abc/sk/s1"  # below the daemon's own memory cgroup
    assert (mem / "memory.limit_in_bytes").read_text() == f"{256 << 20}\n"
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == f"{256 << 20}\n"
    assert (fake.root / "cpu/sk/s1/cpu.cfs_quota_us").read_text() == "50000\n"
    assert (fake.root / "cpu/sk/s1/cpu.cfs_period_us").read_text() == "100000\n"
    assert (fake.root / "pids/sk/s1/pids.max").read_text() == "64\n"
    assert (fake.root / "freezer/sk/s1").is_dir() and (fake.root / "cpuacct/sk/s1").is_dir()
    assert mgr.list() == ["s1"]


def test_v1_memsw_order(fake: FakeCgroupFS) -> None:
    # memsw must never be below memory: raise memsw first, lower it last.
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=fake.make_v1(V1_HOST))
    cg = mgr.create("s1", CgroupLimits(memory_bytes=100 << 20))
    order = [p.rsplit("/", 1)[1] for p, _ in fake.writes if "memory." in p]
    assert order == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    fake.writes.clear()
    cg.set_limits(CgroupLimits(memory_bytes=200 << 20))
    order = [p.rsplit("/", 1)[1] for p, _ in fake.writes if "memory." in p]
    assert order == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    fake.writes.clear()
    cg.set_limits(CgroupLimits())
    assert [v for p, v in fake.writes if "memory." in p] == ["-1", "-1"]


def test_v1_comounted_cpu_cpuacct(fake: FakeCgroupFS) -> None:
    psc = fake.make_v1(["cpu,cpuacct", "memory", "pids", "freezer"])
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    cg = mgr.create("s1", LIMITS)
    assert (fake.root / "cpu,cpuacct/sk/s1/cpu.cfs_quota_us").read_text() == "50000\n"
    p = _sleeper()
    try:
        cg.add_process(p.pid)
        # one write per hierarchy: cpu and cpuacct share a directory
        assert len(written(fake, "s1/cgroup.procs")) == 4
    finally:
        p.kill()
        p.wait()


def test_v1_stats(fake: FakeCgroupFS) -> None:
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=fake.make_v1(V1_HOST))
    cg = mgr.create("s1", LIMITS)
    r = fake.root
    (r / "memory/sk/s1/memory.usage_in_bytes").write_text("4096\n")
    (r / "memory/sk/s1/memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (r / "cpuacct/sk/s1/cpuacct.usage").write_text("2500000\n")
    (r / "cpu/sk/s1/cpu.stat").write_text("nr_periods 10\nnr_throttled 7\n"
                                          "throttled_time 9000000\n")
    (r / "pids/sk/s1/pids.current").write_text("5\n")
    s = cg.stats()
    assert (s.memory_bytes, s.memory_limit, s.cpu_usage_usec, s.pids, s.oom_kills) == (
        4096, 256 << 20, 2500, 5, 3)
    assert (s.nr_throttled, s.throttled_usec) == (7, 9000)
    cg.set_limits(CgroupLimits())
    (r / "memory/sk/s1/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cg.stats().memory_limit is None


def test_v1_kill_freezes_kills_thaws(fake: FakeCgroupFS) -> None:
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=fake.make_v1(V1_HOST))
    cg = mgr.create("s1", LIMITS)
    p = _sleeper()
    try:
        cg.add_process(p.pid)
        cg.kill_all()
        assert p.wait(timeout=5) == -9
        assert written(fake, "freezer.state") == ["FROZEN", "THAWED"]
        cg.remove()
        assert mgr.list() == [] and not (fake.root / "memory/sk/s1").exists()
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize(("layout", "unified", "expect"), [
    (["memory", "cpu", "cpuacct", "freezer"], ["hugetlb"], "only [hugetlb]"),
    (["cpu", "pids"], None, "cgroup v1 has [cpu pids]"),
    ([], None, "no cgroup hierarchy found"),
])
def test_refusal_names_what_was_found(fake: FakeCgroupFS, layout: list[str],
                                      unified: list[str] | None, expect: str) -> None:
    psc = fake.make_v1(layout, unified=unified)
    with pytest.raises(CgroupsUnavailableError, match="cgroup v2 not mounted") as ei:
        open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    assert expect in ei.value.message


def test_hybrid_with_controllers_on_unified_uses_v2(fake: FakeCgroupFS) -> None:
    # cgroup_no_v1=memory,pids,cpu style host: the controllers live on the unified mount.
    psc = fake.make_v1(["freezer"], unified=["cpu", "memory", "pids"])
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    assert isinstance(mgr, V2Manager) and mgr.path == fake.root / "unified/sk"


def test_allow_unlimited_without_any_hierarchy(fake: FakeCgroupFS) -> None:
    psc = fake.make_v1([])
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc, allow_unlimited=True)
    assert isinstance(mgr, UnlimitedManager) and mgr.version == 0
    cg = mgr.create("s1", LIMITS)
    p = _sleeper()
    try:
        cg.add_process(p.pid)
        assert cg.stats().pids == 1
        cg.kill_all()
        assert p.wait(timeout=5) == -9 and cg.procs() == []
    finally:
        p.kill()
        p.wait()


def test_allow_unlimited_uses_the_v1_controllers_that_exist(fake: FakeCgroupFS) -> None:
    psc = fake.make_v1(["memory", "cpu", "freezer"], unified=["hugetlb"])
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc, allow_unlimited=True)
    assert isinstance(mgr, V1Manager) and mgr.missing == {"pids"}
    mgr.create("s1", LIMITS)
    assert (fake.root / "memory/sk/s1/memory.limit_in_bytes").read_text() == f"{256 << 20}\n"


def test_refusal_has_no_side_effects_on_v1(fake: FakeCgroupFS) -> None:
    psc = fake.make_v1(["memory", "cpu"])
    with pytest.raises(CgroupsUnavailableError):
        open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    assert fake.writes == [] and not (fake.root / "memory/sk").exists()


def test_v1_self_move_of_a_single_threaded_process_uses_tasks(fake: FakeCgroupFS) -> None:
    from tests.support.forked import in_child

    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=fake.make_v1(V1_HOST))
    cg = mgr.create("s1", LIMITS)

    def child() -> list[list[str]]:
        fake.writes.clear()
        cg.add_process(os.getpid())  # a forked child is single-threaded
        assert cg.procs() == [os.getpid()]
        return [list(w) for w in fake.writes]

    writes = in_child(child)
    assert {p.rsplit("/", 1)[1] for p, _ in writes} == {"tasks"}
    assert {v for _, v in writes} == {"0"} and len(writes) == 5
    p = _sleeper()
    try:
        fake.writes.clear()
        cg.add_process(p.pid)  # another process: its whole thread group
        assert {w[0].rsplit("/", 1)[1] for w in fake.writes} == {"cgroup.procs"}
    finally:
        p.kill()
        p.wait()


# -- recorded paths: a daemon restarted in another cgroup --------------------------------

def test_v2_open_paths_from_another_daemon_cgroup(fake: FakeCgroupFS) -> None:
    psc = fake.make_v2(ALL, own="/svc/a")
    old = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    cg = old.create("s1", LIMITS)
    recorded = cg.paths()
    assert recorded == {"": str(fake.root / "svc/a/sk/s1")}
    fake._v2_dir(fake.root / "svc/b", ALL)
    new = open_manager(fake.root, "sk", fs=fake,
                       proc_self_cgroup=fake.proc_self_cgroup("0::/svc/b\n"))
    assert new.open("s1") is None  # not under the new daemon's parent
    found = new.open_paths("s1", recorded)
    assert found is not None and found.paths() == recorded
    assert found.stats().memory_limit == 256 << 20
    found.remove()
    assert not (fake.root / "svc/a/sk/s1").exists()


def test_v1_open_paths_from_another_daemon_cgroup(fake: FakeCgroupFS) -> None:
    psc = fake.make_v1(V1_HOST, own={"memory": "/a"}, unified=["hugetlb"])
    old = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    recorded = old.create("s1", LIMITS).paths()
    assert recorded["memory"] == str(fake.root / "memory/a/sk/s1")
    (fake.root / "memory/b").mkdir()
    fake._v1_files(fake.root / "memory/b", ["memory"], False)
    new = open_manager(fake.root, "sk2", fs=fake,
                       proc_self_cgroup=fake.proc_self_cgroup("4:memory:/b\n"))
    assert new.open("s1") is None
    found = new.open_paths("s1", recorded)
    assert found is not None and found.stats().memory_limit == 256 << 20
    found.remove()
    assert not (fake.root / "memory/a/sk/s1").exists()


@pytest.mark.parametrize("paths", [
    {"": "/etc/s1"},  # outside the hierarchy
    {"": "{root}/x/other"},  # another cgroup's name
    {"": "{root}/x/../../s1"},
])
def test_open_paths_refuses_foreign_paths(fake: FakeCgroupFS, paths: dict[str, str]) -> None:
    mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=fake.make_v2(ALL))
    recorded = {k: v.format(root=fake.root) for k, v in paths.items()}
    assert mgr.open_paths("s1", recorded) is None


@pytest.mark.parametrize(("own", "delegated", "expected"), [
    ("/system.slice/sandkasten.service", False, "sandkasten.service"),
    ("/system.slice/sandkasten.service", True, None),
    ("/system.slice/sandkasten@2.service", False, "sandkasten@2.service"),
    ("/user.slice/user-1000.slice/session-3.scope", False, None),  # not a service
    ("/", False, None),
])
def test_v2_service_without_delegate_is_reported(fake: FakeCgroupFS, own: str, delegated: bool,
                                                  expected: str | None,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # systemd stops an undelegated service at the first OOM kill anywhere below it (seen in
    # the cgroup v2 VM), so the daemon names the missing Delegate=yes at start-up.
    psc = fake.make_v2(ALL, own=own)
    base = fake.root / own.lstrip("/")
    if delegated:
        try:
            os.setxattr(base, "user.delegate", b"1")  # systemd >= 251 marks delegation so
        except OSError as e:
            pytest.skip(f"the test directory's filesystem has no user xattrs: {e.strerror}")
    with caplog.at_level("WARNING", logger="sandkasten"):
        mgr = open_manager(fake.root, "sk", fs=fake, proc_self_cgroup=psc)
    assert isinstance(mgr, V2Manager) and mgr.undelegated == expected
    assert ("Delegate=yes" in caplog.text) == (expected is not None)
