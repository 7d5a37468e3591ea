"""fd-based file operations in directories a sandbox controls: nothing follows a symlink
out, tar streams round-trip, hostile archives are refused."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sandkasten.errors import SandkastenError
from sandkasten.session import hostfs


@pytest.mark.parametrize(
    ("path", "clamp", "parts"),
    [("a/b", False, ["a", "b"]), ("/a//./b/", False, ["a", "b"]), ("", False, []),
     ("a/../b", True, ["b"]), ("/../../etc", True, ["etc"]), ("..", True, [])],
)
def test_clean_relpath(path: str, clamp: bool, parts: list[str]) -> None:
    assert hostfs.clean_relpath(path, clamp=clamp) == parts


@pytest.mark.parametrize("path", ["a/../b", "..", "x/\0y"])
def test_clean_relpath_refuses(path: str) -> None:
    with pytest.raises(SandkastenError) as ei:
        hostfs.clean_relpath(path)
    assert ei.value.status == 400


def test_open_in_root_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("inside\n")
    (tmp_path / "outside").write_text("host secret\n")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("../../outside", root / "rel-link")
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("abs-link", "rel-link", "../outside", "/../../outside"):
            try:
                fd = hostfs.open_in_root(rfd, name)
            except FileNotFoundError:
                continue  # resolved inside the root, where there is no such file
            with os.fdopen(fd) as f:
                assert f.read() == "inside\n", name  # /etc/passwd of the root, not the host
    finally:
        os.close(rfd)


def test_write_stream_never_follows_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "dir-link")
    os.symlink(outside / "f", root / "file-link")
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(SandkastenError) as ei:
            hostfs.write_stream(rfd, "dir-link/x", b"x", uid=os.getuid(), gid=os.getgid())
        assert ei.value.code == "path_conflict"
        # the final name is replaced, not followed
        n = hostfs.write_stream(rfd, "file-link", io.BytesIO(b"data"), uid=os.getuid(),
                                gid=os.getgid())
        assert n == 4 and (root / "file-link").read_bytes() == b"data"
        assert not (root / "file-link").is_symlink()
        assert list(outside.iterdir()) == []
        hostfs.write_stream(rfd, "new/deep/f.txt", b"ok", mode=0o600, uid=os.getuid(),
                            gid=os.getgid())
        assert (root / "new/deep/f.txt").stat().st_mode & 0o777 == 0o600
        assert not [p for p in root.rglob(".*sk-*")]  # no temporary file left
    finally:
        os.close(rfd)


def test_tar_roundtrip_streams(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d/e").mkdir(parents=True)
    big = os.urandom((3 << 20) + 17)
    (src / "d/e/big.bin").write_bytes(big)
    (src / "empty").write_bytes(b"")
    os.symlink("/etc/shadow", src / "link")
    os.mkfifo(src / "fifo")
    chunks = list(hostfs.iter_tar(src, "/"))
    assert max(len(c) for c in chunks) <= hostfs.CHUNK + 4096  # streamed, never whole
    data = b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert sorted(tf.getnames()) == ["d", "d/e", "d/e/big.bin", "empty", "link"]
        assert tf.getmember("link").linkname == "/etc/shadow"
        f = tf.extractfile("d/e/big.bin")
        assert f is not None and f.read() == big
    dest = tmp_path / "dest"
    dest.mkdir()
    stats = hostfs.extract_tar(io.BytesIO(data), dest, uid=os.getuid(), gid=os.getgid())
    assert (stats.files, stats.dirs, stats.symlinks) == (2, 2, 1)
    assert (dest / "d/e/big.bin").read_bytes() == big
    assert os.readlink(dest / "link") == "/etc/shadow"


def test_single_file_archive_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    data = b"".join(hostfs.iter_tar(tmp_path, "/f.txt"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.getnames() == ["f.txt"]
    with pytest.raises(SandkastenError) as ei:
        hostfs.iter_tar(tmp_path, "/nope")
    assert ei.value.code == "file_not_found"


def _tar(*members: tuple[str, bytes, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
                ti.linkname = payload.decode()
                tf.addfile(ti)
            else:
                ti.size = len(payload)
                ti.mode = 0o6755
                tf.addfile(ti, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "code"),
    [
        ([("../x", tarfile.REGTYPE, b"x")], "invalid_path"),
        ([("a/../../x", tarfile.REGTYPE, b"x")], "invalid_path"),
        ([("l", tarfile.SYMTYPE, b"/tmp"), ("l/x", tarfile.REGTYPE, b"x")], "path_conflict"),
    ],
)
def test_hostile_archives(tmp_path: Path, members: list[tuple[str, bytes, bytes]],
                          code: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SandkastenError) as ei:
        hostfs.extract_tar(io.BytesIO(_tar(*members)), dest, uid=os.getuid(), gid=os.getgid())
    assert ei.value.code == code
    assert not (tmp_path / "x").exists()


def test_archive_drops_setuid_and_skips_specials(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = _tar(("/abs/run.sh", tarfile.REGTYPE, b"#!/bin/sh\n"),
                ("hard", tarfile.LNKTYPE, b"abs/run.sh"), ("dev", tarfile.CHRTYPE, b""))
    stats = hostfs.extract_tar(io.BytesIO(data), dest, uid=os.getuid(), gid=os.getgid())
    assert (stats.files, stats.skipped) == (1, 2)
    assert (dest / "abs/run.sh").stat().st_mode & 0o7777 == 0o755


def test_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(SandkastenError) as ei:
        hostfs.extract_tar(io.BytesIO(b"hello" * 300), tmp_path)
    assert ei.value.code == "invalid_archive"
