"""Cross-check with an independent implementation: ``umoci unpack`` of the same OCI layout.

A three-layer image with whiteouts of files and directories, opaque directories,
replacements of files by directories and symlinks, hardlinks (one of them later
whited out), setuid/setgid/sticky modes, owners, xattrs, fifos, device nodes and long
names is imported; ``image export`` and ``image mount`` must then equal umoci's rootfs
file by file (type, mode, owner, content, link target, hardlink groups, xattrs).
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.imagecli import imgbuilder
from tests.support.images import TarBuilder, write_oci_layout
from tests.support.treecmp import compare_trees

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("require_root")]

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)
LONG = "long/" + "x" * 120 + "/" + "y" * 140


def layers() -> list[bytes]:
    l1 = TarBuilder()
    l1.dir("./", 0o755).dir("etc").file("etc/motd", b"welcome").file("etc/hostname", b"one")
    l1.dir("usr/bin").file("usr/bin/su", b"su", mode=0o4755).file("usr/bin/wall", b"w",
                                                                   mode=0o2755, gid=5)
    l1.file("usr/bin/tool", b"tool v1", mode=0o755)
    l1.dir("usr/lib").file("usr/lib/a.so", b"A" * 3000).hardlink("usr/lib/b.so", "usr/lib/a.so")
    l1.file("usr/lib/c.so", b"C").hardlink("usr/lib/d.so", "usr/lib/c.so")
    l1.dir("opt/a").file("opt/a/x", b"x").file("opt/a/y", b"y")
    l1.dir("var/lib/data").file("var/lib/data/1", b"1").file("var/lib/data/2", b"2")
    l1.dir("home/app", 0o700, uid=1000, gid=1000).file("home/app/.rc", b"rc", uid=1000, gid=1000)
    l1.dir("tmp", 0o1777).fifo("tmp/fifo").device("dev/null", tarfile.CHRTYPE, 1, 3)
    l1.file("usr/bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAP,
                                                          "user.kind": b"net"})
    l1.symlink("bin", "usr/bin").symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
    l1.file(LONG, b"long name")
    l2 = TarBuilder()
    l2.whiteout("etc/motd").whiteout("opt/a").opaque("var/lib/data").file("var/lib/data/3", b"3")
    l2.file("etc/hostname", b"two").symlink("usr/bin/tool", "tool-v2")
    l2.file("usr/bin/tool-v2", b"tool v2", mode=0o755).whiteout("usr/lib/b.so")
    l2.dir("srv").file("srv/p", b"p").hardlink("srv/q", "srv/p")
    l3 = TarBuilder()
    l3.file("opt/a", b"a is a file now").whiteout("var/lib/data/3").file("var/lib/data/4", b"4")
    l3.dir("usr", 0o711).dir("etc/hostname").file("etc/hostname/name", b"three")
    l3.file("usr/bin/ping", b"ping2", mode=0o755, xattrs={"user.kind": b"net2"})
    l3.whiteout(LONG)
    return [l1.bytes(), l2.bytes(), l3.bytes()]


@pytest.fixture
def imported(tmp_path: Path) -> tuple[Path, Path]:
    """(data dir with image "x", umoci's rootfs of the same layout)."""
    layout = tmp_path / "layout"
    write_oci_layout(layout, layers(), compression="gzip", ref="v1")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)], check=True,
                   capture_output=True)
    rootfs = bundle / "rootfs"
    # The reference itself shows every case the layers exercise.
    assert sorted(p.name for p in (rootfs / "var/lib/data").iterdir()) == ["4"]
    assert not (rootfs / "etc/motd").exists() and not (rootfs / "usr/lib/b.so").exists()
    assert (rootfs / "opt/a").read_bytes() == b"a is a file now"
    assert (rootfs / "srv/p").stat().st_ino == (rootfs / "srv/q").stat().st_ino
    assert (rootfs / "usr/bin/su").stat().st_mode & 0o7777 == 0o4755
    assert not (rootfs / LONG).exists() and (rootfs / "long").is_dir()
    data_dir = tmp_path / "data"
    proc = imgbuilder("import", "--name", "x", "--tar", layout, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    return data_dir, bundle / "rootfs"


def test_export_equals_umoci(tmp_path: Path, imported: tuple[Path, Path]) -> None:
    data_dir, umoci_rootfs = imported
    out = tmp_path / "x.tar"
    assert imgbuilder("export", "x", "-o", out, data_dir=data_dir).returncode == 0
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert not [n for n in names if ".wh." in n], "whiteouts are applied, not exported"
    ours = tmp_path / "ours"
    ours.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                    str(out), "-C", str(ours)], check=True)
    assert compare_trees(umoci_rootfs, ours) == []
    assert (ours / "etc/hostname/name").read_text() == "three"


def test_mount_equals_umoci(tmp_path: Path, imported: tuple[Path, Path]) -> None:
    data_dir, umoci_rootfs = imported
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = imgbuilder("mount", "x", mnt, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    try:
        assert compare_trees(umoci_rootfs, mnt) == []
        with pytest.raises(OSError):
            (mnt / "etc/new").write_text("read-only")
    finally:
        assert imgbuilder("umount", mnt, data_dir=data_dir).returncode == 0
    assert not any(mnt.iterdir())


def test_flattened_equals_umoci(tmp_path: Path, imported: tuple[Path, Path]) -> None:
    data_dir, umoci_rootfs = imported
    layout = tmp_path / "layout"
    proc = imgbuilder("import", "--name", "flat", "--flatten", "--tar", layout,
                      data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    diff_id = json.loads((data_dir / "images/flat.json").read_text())["layers"][0]["diff_id"]
    assert compare_trees(umoci_rootfs, data_dir / "layers" / diff_id[7:]) == []
