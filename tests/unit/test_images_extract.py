"""Layer extraction from hand-made tar headers: every member type, in every tar format.

Needs root (owners, device nodes, trusted xattrs), as extraction itself does.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from imgbuilder.errors import LayerError
from imgbuilder.extract import ExtractStats, extract_layer
from tests.support.images import MTIME, TarBuilder

pytestmark = pytest.mark.usefixtures("require_root")

FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
LONG_DIR = "deep/" + "/".join(["d" * 60] * 3)
LONG_NAME = LONG_DIR + "/" + "f" * 90


def extract(data: bytes, dest: Path) -> ExtractStats:
    dest.mkdir(exist_ok=True)
    return extract_layer(io.BytesIO(data), dest)


def full_layer(fmt: int) -> bytes:
    b = TarBuilder(fmt)
    b.dir("./", mode=0o755)
    b.dir("etc", mode=0o750, uid=0, gid=42)
    b.file("etc/hostname", b"box\n", mode=0o644, uid=1000, gid=1000)
    b.file("usr/bin/su", b"\x7fELF", mode=0o4755)
    b.file("usr/bin/wall", b"\x7fELF", mode=0o2755, gid=5)
    b.dir("tmp", mode=0o1777)
    b.symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
    b.symlink("lib", "usr/lib", uid=7, gid=8)
    b.file("usr/lib/a.so", b"A" * 5000)
    b.hardlink("usr/lib/b.so", "usr/lib/a.so")
    b.device("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666)
    b.device("dev/loop9", tarfile.BLKTYPE, 7, 9, mode=0o660, gid=6)
    b.fifo("run/fifo", mode=0o600)
    b.dir(LONG_DIR)
    if fmt != tarfile.USTAR_FORMAT:  # ustar cannot hold these names
        b.file(LONG_NAME, b"long")
        b.symlink("deep/longlink", "/" + "t" * 150)
    if fmt == tarfile.PAX_FORMAT:
        b.file("usr/bin/ping", b"ping", mode=0o755,
               xattrs={"security.capability": b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12),
                       "user.note": b"hi"})
        b.dir("xdir", xattrs={"user.dir": b"d"})
    return b.bytes()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_member_type(tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / "layer"
    stats = extract(full_layer(FORMATS[fmt]), dest)
    st = os.lstat(dest / "etc")
    assert stat.S_IMODE(st.st_mode) == 0o750 and (st.st_uid, st.st_gid) == (0, 42)
    assert st.st_mtime == MTIME, "directory mtime is set after its content"
    host = dest / "etc/hostname"
    assert host.read_bytes() == b"box\n"
    assert (os.lstat(host).st_uid, os.lstat(host).st_gid) == (1000, 1000)
    assert os.lstat(host).st_mtime == MTIME
    assert stat.S_IMODE(os.lstat(dest / "usr/bin/su").st_mode) == 0o4755
    wall = os.lstat(dest / "usr/bin/wall")
    assert stat.S_IMODE(wall.st_mode) == 0o2755 and wall.st_gid == 5
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777
    assert os.readlink(dest / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    lib = os.lstat(dest / "lib")
    assert stat.S_ISLNK(lib.st_mode) and (lib.st_uid, lib.st_gid) == (7, 8)
    a, b = os.lstat(dest / "usr/lib/a.so"), os.lstat(dest / "usr/lib/b.so")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    null = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(dest / "dev/loop9")
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 9)
    assert loop.st_gid == 6
    assert stat.S_ISFIFO(os.lstat(dest / "run/fifo").st_mode)
    assert stat.S_IMODE(os.lstat(dest / "run").st_mode) == 0o755, "implicit parents are 0755"
    assert (dest / LONG_DIR).is_dir()
    if fmt != "ustar":
        assert (dest / LONG_NAME).read_bytes() == b"long"
        assert os.readlink(dest / "deep/longlink") == "/" + "t" * 150
    if fmt == "pax":
        ping = dest / "usr/bin/ping"
        assert os.getxattr(ping, "security.capability")[:4] == b"\x01\x00\x00\x02"
        assert os.getxattr(ping, "user.note") == b"hi"
        assert os.getxattr(dest / "xdir", "user.dir") == b"d"
    assert stats.hardlinks == 1 and stats.devices == 2 and stats.fifos == 1
    assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o755


def test_whiteouts_become_overlay_format(tmp_path: Path) -> None:
    b = TarBuilder().dir("etc").whiteout("etc/motd").opaque("usr/share").whiteout("gone")
    stats = extract(b.bytes(), tmp_path / "l")
    for p in ("etc/motd", "gone"):
        st = os.lstat(tmp_path / "l" / p)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and (st.st_uid, st.st_gid) == (0, 0)
    assert os.getxattr(tmp_path / "l/usr/share", "trusted.overlay.opaque") == b"y"
    assert not list((tmp_path / "l").rglob(".wh.*"))
    assert (stats.whiteouts, stats.opaque_dirs) == (2, 1)


def test_forged_overlay_xattrs_are_dropped(tmp_path: Path) -> None:
    b = TarBuilder().dir("d", xattrs={"trusted.overlay.redirect": b"/etc",
                                      "trusted.overlay.opaque": b"y", "user.ok": b"1"})
    stats = extract(b.bytes(), tmp_path / "l")
    names = os.listxattr(tmp_path / "l/d")
    assert "user.ok" in names and not [n for n in names if n.startswith("trusted.overlay.")]
    assert stats.dropped_xattrs == 2


def test_later_members_replace_earlier_ones_as_tar_does(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep")
    b = TarBuilder()
    b.file("f", b"one").file("f", b"two", mode=0o600)
    b.file("d2f").dir("d2f")                      # a directory replaces a file
    b.dir("f2d").file("f2d/x").file("f2d", b"now a file")  # a file replaces a directory
    b.symlink("s", str(outside)).file("s", b"plain")      # a file replaces a symlink
    b.dir("keep", mode=0o700).file("keep/a").dir("keep", mode=0o755)  # dir over dir: metadata
    b.whiteout("w").dir("w").file("w/new")        # whiteout then dir: an opaque dir
    b.file("x", b"mine").whiteout("x")            # same-layer content wins over a whiteout
    extract(b.bytes(), tmp_path / "l")
    lay = tmp_path / "l"
    assert (lay / "f").read_bytes() == b"two" and stat.S_IMODE(os.lstat(lay / "f").st_mode) == 0o600
    assert (lay / "d2f").is_dir()
    assert (lay / "f2d").read_bytes() == b"now a file"
    assert not (lay / "s").is_symlink() and (lay / "s").read_bytes() == b"plain"
    assert outside.read_text() == "keep"
    assert (lay / "keep/a").exists() and stat.S_IMODE(os.lstat(lay / "keep").st_mode) == 0o755
    assert os.getxattr(lay / "w", "trusted.overlay.opaque") == b"y" and (lay / "w/new").exists()
    assert (lay / "x").read_bytes() == b"mine"


def test_fifo_then_file_is_replaced_not_opened(tmp_path: Path) -> None:
    b = TarBuilder().fifo("p").device("n", tarfile.CHRTYPE, 1, 3).file("p", b"data").file("n", b"x")
    extract(b.bytes(), tmp_path / "l")  # would block forever if the fifo were opened
    assert (tmp_path / "l/p").read_bytes() == b"data"
    assert stat.S_ISREG(os.lstat(tmp_path / "l/n").st_mode)


@pytest.mark.parametrize(("build", "match"), [
    (lambda b: b.hardlink("h", "missing"), "not in this layer"),
    (lambda b: b.dir("d").hardlink("h", "d"), "hardlink to a directory"),
    (lambda b: b.hardlink("h", "nodir/file"), "does not exist"),
    (lambda b: b.file("f").raw(_type("f/x", tarfile.REGTYPE)), "symlink or not a directory"),
])
def test_bad_links_are_refused(tmp_path: Path, build, match: str) -> None:  # type: ignore[no-untyped-def]
    b = TarBuilder()
    build(b)
    with pytest.raises(LayerError, match=match):
        extract(b.bytes(), tmp_path / "l")


def _type(name: str, type_: bytes) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    return ti


def test_truncated_and_corrupt_streams(tmp_path: Path) -> None:
    data = TarBuilder().file("big", b"x" * 4096).bytes()
    with pytest.raises(LayerError, match="truncated"):
        extract(data[:1500], tmp_path / "a")
    bad = bytearray(data)
    bad[0:3] = b"zzz"  # breaks the header checksum
    with pytest.raises(LayerError, match="corrupt tar header"):
        extract(bytes(bad), tmp_path / "b")
    with pytest.raises(LayerError, match="empty layer"):
        extract(b"", tmp_path / "c")


def test_empty_archive_and_trailing_padding(tmp_path: Path) -> None:
    stats = extract(bytes(10240), tmp_path / "l")
    assert stats.entries == 0 and stats.tar_bytes == 10240
    assert list((tmp_path / "l").iterdir()) == []


def test_sparse_members_are_refused(tmp_path: Path) -> None:
    ti = _type("s", tarfile.GNUTYPE_SPARSE)
    data = TarBuilder(tarfile.GNU_FORMAT).raw(ti).bytes()
    with pytest.raises(LayerError):
        extract(data, tmp_path / "l")


def test_pax_nanosecond_mtime_and_global_header(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global"}) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"mtime": "1700000000.123456789"}
        tf.addfile(ti, io.BytesIO())
    extract(buf.getvalue(), tmp_path / "l")
    assert os.lstat(tmp_path / "l/f").st_mtime_ns == 1_700_000_000_123_456_789
