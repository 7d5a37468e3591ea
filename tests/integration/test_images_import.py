"""``imgbuilder import`` round trips, compared file by file with GNU tar's own extraction."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

from imgbuilder.flatten import max_layers
from imgbuilder.images import ImageRecord
from imgbuilder.store import Store
from tests.support.imagecli import assert_one_line_error, imgbuilder
from tests.support.images import TarBuilder, compress, write_oci_layout
from tests.support.rootfs import busybox_rootfs, debian_python_tar
from tests.support.treecmp import compare_trees

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("require_root")]


def _put(path: Path, data: bytes) -> Path:
    # busybox applets are symlinks to /bin/busybox: replace, never write through them.
    if path.is_symlink():
        path.unlink()
    with open(path, "xb") as f:
        f.write(data)
    return path


def _rootfs(tmp_path: Path) -> Path:
    """A busybox root with the awkward parts a real image has."""
    root = busybox_rootfs(tmp_path / "rootfs")
    _put(root / "usr/bin/passwd", b"\x7fELF passwd")
    os.chmod(root / "usr/bin/passwd", 0o4755)
    _put(root / "usr/bin/crontab", b"\x7fELF crontab")
    os.chown(root / "usr/bin/crontab", 0, 102)
    os.chmod(root / "usr/bin/crontab", 0o2755)
    (root / "home/app").mkdir()
    os.chown(root / "home/app", 1000, 1000)
    _put(root / "home/app/.profile", b"export A=1\n")
    os.chown(root / "home/app/.profile", 1000, 1000)
    os.link(root / "usr/bin/passwd", root / "usr/bin/passwd.hard")
    os.mkfifo(root / "tmp/fifo")
    os.mknod(root / "dev/null", 0o20666, os.makedev(1, 3))
    long_dir = root / ("l" * 80) / ("m" * 80)
    long_dir.mkdir(parents=True)
    _put(long_dir / ("n" * 120), b"long")
    os.setxattr(root / "usr/bin/passwd", "user.origin", b"test")
    os.setxattr(root / "bin/busybox", "security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12))
    return root


def _gnu_tar(root: Path, out: Path) -> Path:
    # What `docker export` produces: relative names, numeric owners, PAX xattrs.
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--format=pax",
                    "-cf", str(out), "-C", str(root), "."], check=True)
    return out


def _gnu_extract(tarball: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                    str(tarball), "-C", str(dest)], check=True)
    return dest


def _only_layer(data_dir: Path, name: str) -> Path:
    rec = ImageRecord.from_json((data_dir / "images" / f"{name}.json").read_text())
    assert len(rec.layers) == 1
    return data_dir / "layers" / rec.layers[0].diff_id.split(":")[1]


@pytest.mark.parametrize(("kind", "file_name", "via_stdin"), [
    ("none", "rootfs.tar", False),
    ("gzip", "rootfs.tar.gz", False),
    ("zstd", "rootfs.tar.zst", False),
    ("gzip", "-", True),
    ("zstd", "rootfs.tgz", False),  # the name lies; the content decides
])
def test_docker_export_round_trip(tmp_path: Path, kind: str, file_name: str,
                                  via_stdin: bool) -> None:
    plain = _gnu_tar(_rootfs(tmp_path), tmp_path / "plain.tar")
    expected = _gnu_extract(plain, tmp_path / "expected")
    data = compress(plain.read_bytes(), kind)
    data_dir = tmp_path / "data"
    if via_stdin:
        proc = imgbuilder("import", "--name", "bb", "--tar", "-", data_dir=data_dir, stdin=data)
    else:
        (tmp_path / file_name).write_bytes(data)
        proc = imgbuilder("import", "--name", "bb", "--tar", tmp_path / file_name,
                          data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    layer = _only_layer(data_dir, "bb")
    assert compare_trees(expected, layer, mtime=True) == []
    rec = Store(data_dir).get_image("bb")
    assert rec.source == "import" and rec.config["Env"][0].startswith("PATH=")
    assert rec.layers[0].diff_id == "sha256:" + hashlib.sha256(plain.read_bytes()).hexdigest()
    listed = json.loads(imgbuilder("list", "--json", data_dir=data_dir).stdout)
    assert [(i["name"], i["layers"]) for i in listed] == [("bb", 1)]


def test_export_of_an_import_is_the_same_tree(tmp_path: Path) -> None:
    plain = _gnu_tar(_rootfs(tmp_path), tmp_path / "plain.tar")
    expected = _gnu_extract(plain, tmp_path / "expected")
    data_dir = tmp_path / "data"
    assert imgbuilder("import", "--name", "bb", "--tar", plain, data_dir=data_dir).returncode == 0
    out = tmp_path / "export.tar"
    proc = imgbuilder("export", "bb", "-o", out, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    again = _gnu_extract(out, tmp_path / "again")
    assert compare_trees(expected, again, mtime=True) == []


@pytest.mark.slow
def test_debian_rootfs_round_trip(tmp_path: Path) -> None:
    src = debian_python_tar()
    gz = tmp_path / "debian.tar.gz"
    subprocess.run(f"pigz -1 -c {src} > {gz}", shell=True, check=True)
    expected = _gnu_extract(src, tmp_path / "expected")
    data_dir = tmp_path / "data"
    proc = imgbuilder("import", "--name", "python", "--tar", gz, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    assert compare_trees(expected, _only_layer(data_dir, "python"), mtime=True) == []


def _layers() -> list[bytes]:
    base = TarBuilder().dir("etc").file("etc/os-release", b"ID=test\n").dir("usr/share/doc", 0o755)
    base.file("usr/share/doc/a", b"a").file("etc/motd", b"hello").dir("opt/old").file("opt/old/x")
    top = TarBuilder().whiteout("etc/motd").opaque("opt/old").file("opt/old/y", b"y")
    top.file("usr/bin/tool", b"#!/bin/sh\n", mode=0o755)
    return [base.bytes(), top.bytes()]


@pytest.mark.parametrize("packaging", ["oci-dir", "oci-tar", "docker-archive", "docker-oci-tar"])
def test_image_archives(tmp_path: Path, packaging: str) -> None:
    layout = tmp_path / "layout"
    digests = write_oci_layout(layout, _layers(), compression="gzip", ref="v1")
    if packaging == "oci-dir":
        source = layout
    elif packaging == "oci-tar":
        source = tmp_path / "layout.tar"
        with tarfile.open(source, "w") as tf:
            tf.add(layout, arcname=".")
    elif packaging == "docker-archive":  # legacy `docker save`, written by skopeo
        source = tmp_path / "saved.tar"
        subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:v1",
                        f"docker-archive:{source}:app:v1"], check=True)
    else:  # Docker 25+ `docker save`: an OCI layout plus manifest.json, gzip'ed by the user
        cfg = json.loads((layout / "index.json").read_text())["manifests"][0]
        manifest = json.loads((layout / "blobs/sha256" / cfg["digest"][7:]).read_text())
        (layout / "manifest.json").write_text(json.dumps([{
            "Config": "blobs/sha256/" + manifest["config"]["digest"][7:],
            "RepoTags": ["app:v1"],
            "Layers": ["blobs/sha256/" + d["digest"][7:] for d in manifest["layers"]]}]))
        plain = tmp_path / "saved.tar"
        with tarfile.open(plain, "w") as tf:
            for p in sorted(layout.rglob("*")):
                tf.add(p, arcname=str(p.relative_to(layout)), recursive=False)
        source = tmp_path / "saved.tar.gz"
        source.write_bytes(compress(plain.read_bytes(), "gzip"))
    data_dir = tmp_path / "data"
    proc = imgbuilder("import", "--name", "app", "--tar", source, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    store = Store(data_dir)
    rec = store.get_image("app")
    assert len(rec.layers) == 2
    assert rec.config["WorkingDir"] == "/root"
    if packaging in ("oci-dir", "oci-tar", "docker-oci-tar"):
        assert rec.manifest_digest == digests["manifest"]
    top = store.layer_paths(rec)[1]
    assert (top / "etc/motd").is_char_device()
    assert os.getxattr(top / "opt/old", "trusted.overlay.opaque") == b"y"
    assert imgbuilder("validate", "app", data_dir=data_dir).returncode == 0


def test_corrupt_layout_blob_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digests = write_oci_layout(layout, _layers(), compression="gzip")
    victim = layout / "blobs/sha256" / digests["layers"].split(",")[1][7:]
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    data_dir = tmp_path / "data"
    proc = imgbuilder("import", "--name", "app", "--tar", layout, data_dir=data_dir)
    assert_one_line_error(proc)
    assert not (data_dir / "images/app.json").exists()
    assert not [p for p in (data_dir / "layers").iterdir() if p.name.startswith(".tmp-")]


def test_concurrent_imports_sharing_layers(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, _layers(), compression="zstd")
    data_dir = tmp_path / "data"
    results: dict[str, int] = {}

    def run(name: str) -> None:
        results[name] = imgbuilder("import", "--name", name, "--tar", layout,
                                   data_dir=data_dir).returncode

    threads = [threading.Thread(target=run, args=(f"img{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"img0": 0, "img1": 0, "img2": 0}
    store = Store(data_dir)
    assert len([p for p in store.layers_dir.iterdir()]) == 2  # shared, stored once
    assert store.layer_paths(store.get_image("img0")) == store.layer_paths(store.get_image("img2"))


def test_prune_keeps_leased_and_referenced_layers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for name, layers in (("a", _layers()), ("b", [TarBuilder().file("only-b", b"b").bytes()])):
        layout = tmp_path / name
        write_oci_layout(layout, layers, compression="gzip")
        assert imgbuilder("import", "--name", name, "--tar", layout,
                          data_dir=data_dir).returncode == 0
    store = Store(data_dir)
    rec_a, rec_b = store.get_image("a"), store.get_image("b")
    store.lease("session-1", rec_b)
    assert imgbuilder("delete", "a", data_dir=data_dir).returncode == 0
    assert imgbuilder("delete", "b", data_dir=data_dir).returncode == 0
    report = json.loads(imgbuilder("prune", "--json", data_dir=data_dir).stdout)
    assert sorted(report["layers_removed"]) == sorted(x.diff_id for x in rec_a.layers)
    assert report["bytes_freed"] > 0
    assert store.has_layer(rec_b.layers[0].diff_id), "a leased layer survives prune"
    store.release("session-1")
    report = json.loads(imgbuilder("prune", "--json", data_dir=data_dir).stdout)
    assert report["layers_removed"] == [rec_b.layers[0].diff_id]
    assert list(store.layers_dir.iterdir()) == []


def test_flatten_on_import(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, _layers(), compression="gzip")
    data_dir = tmp_path / "data"
    proc = imgbuilder("import", "--name", "flat", "--flatten", "--tar", layout,
                      data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    store = Store(data_dir)
    rec = store.get_image("flat")
    assert rec.flattened and len(rec.layers) == 1
    (layer,) = store.layer_paths(rec)
    assert not (layer / "etc/motd").exists() and not (layer / "opt/old/x").exists()
    assert (layer / "opt/old/y").read_bytes() == b"y"
    assert (layer / "etc/os-release").exists()


def test_too_many_layers_for_one_mount_are_flattened(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    limit = max_layers(Store(data_dir))
    many = [TarBuilder().file(f"f{i}", str(i).encode()).whiteout(f"f{i - 1}").bytes()
            for i in range(limit + 3)]
    write_oci_layout(tmp_path / "layout", many, compression="none")
    proc = imgbuilder("import", "--name", "tall", "--tar", tmp_path / "layout", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    store = Store(data_dir)
    rec = store.get_image("tall")
    assert rec.flattened and len(rec.layers) == 1
    assert sorted(p.name for p in store.layer_paths(rec)[0].iterdir()) == [f"f{limit + 2}"]


@pytest.mark.parametrize(("args", "needles"), [
    (("inspect", "nope"), ("image not found: nope", "imgbuilder import --name nope")),
    (("validate", "nope"), ("image not found",)),
    (("delete", "nope"), ("image not found",)),
    (("import", "--name", "x", "--tar", "/nonexistent.tar"), ("no such file",)),
    (("import", "--name", "bad/name", "--tar", "/dev/null"), ("invalid image name",)),
])
def test_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], needles: tuple[str]) -> None:
    assert_one_line_error(imgbuilder(*args, data_dir=tmp_path / "data"), *needles)


def test_not_a_tarball(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"<html>not found</html>\n" * 50)
    assert_one_line_error(imgbuilder("import", "--name", "x", "--tar", junk,
                                     data_dir=tmp_path / "data"), "not a tar")


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        big = TarBuilder().file("big", os.urandom(4 << 20)).bytes()
        (tmp_path / "big.tar").write_bytes(big)
        proc = imgbuilder("import", "--name", "big", "--tar", tmp_path / "big.tar",
                          data_dir=small / "data")
        assert_one_line_error(proc, "disk full")
        assert [p.name for p in (small / "data/layers").iterdir()] == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
    shutil.rmtree(small)


def test_sandkasten_image_group_uses_the_same_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_oci_layout(tmp_path / "layout", _layers(), compression="gzip")
    assert imgbuilder("import", "--name", "app", "--tar", tmp_path / "layout",
                      data_dir=data_dir).returncode == 0
    env = dict(os.environ, SANDKASTEN_DATA_DIR=str(data_dir))
    run = [sys.executable, "-c", "from sandkasten.cli import main; main()", "image"]
    listed = subprocess.run([*run, "list", "--json"], capture_output=True, text=True, env=env,
                            check=True)
    assert [i["name"] for i in json.loads(listed.stdout)] == ["app"]
    rm = subprocess.run([*run, "rm", "app"], capture_output=True, text=True, env=env)
    assert rm.returncode == 0, rm.stderr
    again = subprocess.run([*run, "inspect", "app"], capture_output=True, text=True, env=env)
    assert again.returncode == 1 and again.stderr.startswith("error: image not found: app")


def test_malformed_layout_is_one_line(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, _layers())
    (layout / "index.json").write_text('{"manifests": [{"mediaType": "x"}]}')
    assert_one_line_error(imgbuilder("import", "--name", "x", "--tar", layout,
                                     data_dir=tmp_path / "data"), "malformed")


def test_commands_that_need_root_say_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chmod(tmp_path, 0o755)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
              "-m", "imgbuilder"]
    for args in (["import", "--name", "x", "--tar", "/dev/null"], ["mount", "x", str(tmp_path)],
                 ["umount", str(tmp_path)]):
        proc = subprocess.run([*nobody, *args, *(["--data-dir", str(data_dir)]
                                                 if args[0] != "umount" else [])],
                              capture_output=True, text=True, cwd="/")
        assert_one_line_error(proc, "needs root", "sudo")  # type: ignore[arg-type]


def test_list_works_without_root_and_without_a_data_dir() -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
              "-m", "imgbuilder"]
    # pytest's tmp_path is under a 0700 directory: use one the user "nobody" can reach.
    base = Path(tempfile.mkdtemp(prefix="layers-nobody-", dir="/tmp"))
    os.chmod(base, 0o755)
    missing = base / "not-created-yet"
    proc = subprocess.run([*nobody, "list", "--data-dir", str(missing)], capture_output=True,
                          text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "no images" in proc.stderr and "imgbuilder import --name python" in proc.stderr
    proc = subprocess.run([*nobody, "prune", "--data-dir", str(missing)], capture_output=True,
                          text=True, cwd="/")
    shutil.rmtree(base)
    assert_one_line_error(proc, "permission denied", "sudo")  # type: ignore[arg-type]


def test_kill_9_mid_import_publishes_nothing_and_next_import_recovers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    b = TarBuilder()
    for i in range(8):
        b.file(f"blob{i}", os.urandom(1 << 20))
    tar = compress(b.bytes(), "gzip")
    proc = subprocess.Popen([sys.executable, "-m", "imgbuilder", "import", "--name", "k",
                             "--tar", "-", "--data-dir", str(data_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(tar[: len(tar) // 2])  # half the layer, then the process dies
    proc.stdin.flush()
    layers = data_dir / "layers"
    seen = False
    for _ in range(200):
        if layers.is_dir() and any((p / "blob0").exists() for p in layers.glob(".tmp-*")):
            seen = True  # killed while extracting, with part of the layer on disk
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    proc.stdin.close()
    assert seen
    assert [p.name for p in layers.iterdir() if not p.name.startswith(".tmp-")] == []
    assert not (data_dir / "images/k.json").exists()
    (tmp_path / "k.tar.gz").write_bytes(tar)
    again = imgbuilder("import", "--name", "k", "--tar", tmp_path / "k.tar.gz",
                       data_dir=data_dir)
    assert again.returncode == 0, again.stderr
    assert [p.name for p in layers.iterdir() if p.name.startswith(".tmp-")] == []
    assert (Store(data_dir).layer_paths(Store(data_dir).get_image("k"))[0] / "blob7").exists()
