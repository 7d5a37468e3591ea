"""Pulls under failure: dropped connections, corrupt bytes, kill -9, concurrency, full disks,
unsuitable filesystems; and the result checked against skopeo + umoci."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from imgbuilder.errors import StoreError
from imgbuilder.pull import pull_image
from imgbuilder.store import Store
from registry.errors import DigestMismatchError
from registry.transport import RegistryConfig
from tests.integration.test_pull import BASE, TOP, assert_one_error
from tests.support.ocibuild import directory, file, push_image
from tests.support.pulltools import run_pull, start_pull
from tests.support.tcpproxy import FaultProxy
from tests.support.treecmp import compare_trees

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("require_root")]


def noise(n: int, seed: bytes = b"") -> bytes:
    """Incompressible bytes, deterministic."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(seed + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


def settings() -> RegistryConfig:
    return RegistryConfig(environ={}, docker_config=Path("/none"), backoff=0.01)


@pytest.fixture(scope="module")
def big(registry):
    """Two layers of incompressible data (2 MB, 3 MB) so faults land mid-blob."""
    return push_image(registry, "robust/big", "1", [
        [directory("data"), file("data/one", noise(2_000_000, b"1"))],
        [file("data/two", noise(3_000_000, b"2"))],
    ])


def assert_nothing_stored(store: Store, digest: str) -> None:
    assert not store.has_blob(digest)
    assert not store.partial_blob_path(digest).exists()
    assert not [p for p in store.layers_dir.iterdir() if p.name.startswith(".tmp-")]
    assert not store.list_images()


def test_dropped_connection_resumes(registry, big, tmp_path):
    digest = big.layer_digests[1]
    with FaultProxy(registry.port, digest, cut_after=1_000_000, times=2) as proxy:
        store = Store(tmp_path / "data")
        rec = pull_image(store, f"{proxy.host}/robust/big:1", registry_settings=settings())
        assert proxy.faults == 2
        heads = [h.lower() for h in proxy.blob_requests]
    assert len(heads) == 3 and b"range:" not in heads[0]
    assert all(b"range: bytes=" in h for h in heads[1:])
    assert (store.layer_paths(rec)[1] / "data/two").read_bytes() == noise(3_000_000, b"2")


@pytest.mark.parametrize("offset", [100, 2_500_000])
def test_corrupted_blob_is_refused_and_nothing_kept(registry, big, tmp_path, offset):
    digest = big.layer_digests[1]
    with FaultProxy(registry.port, digest, flip_at=offset, times=1000) as proxy:
        store = Store(tmp_path / "data")
        with pytest.raises(DigestMismatchError, match="does not match"):
            pull_image(store, f"{proxy.host}/robust/big:1", registry_settings=settings(),
                       max_concurrency=1)
    assert_nothing_stored(store, digest)
    assert not store.has_layer(big.diff_ids[1])


def test_corrupted_blob_cli_message(registry, big, tmp_path):
    with FaultProxy(registry.port, big.layer_digests[0], flip_at=50_000, times=1000) as proxy:
        proc = run_pull(["--data-dir", str(tmp_path / "data"), f"{proxy.host}/robust/big:1"],
                        tmp_path)
    assert_one_error(proc, "does not match its digest")


def test_kill_9_mid_pull_then_resume(registry, big, tmp_path):
    digest = big.layer_digests[1]
    data = tmp_path / "data"
    store = Store(data)
    partial = store.partial_blob_path(digest)
    with FaultProxy(registry.port, digest, delay=0.05, times=1000) as slow:
        proc = start_pull(["-q", "--data-dir", str(data), f"{slow.host}/robust/big:1"], tmp_path)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if partial.exists() and partial.stat().st_size > 300_000:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the pull never started writing its partial blob")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
    kept = partial.stat().st_size
    assert 0 < kept < 3_000_000
    assert not store.has_layer(big.diff_ids[1]), "no half layer is visible"
    assert not store.list_images()

    with FaultProxy(registry.port, digest, times=0) as proxy:
        done = run_pull(["-q", "--data-dir", str(data), "--name", "big",
                         f"{proxy.host}/robust/big:1"], tmp_path)
        assert done.returncode == 0, done.stderr
        heads = [h.lower() for h in proxy.blob_requests]
    assert len(heads) == 1 and f"range: bytes={kept}-".encode() in heads[0]
    store = Store(data)  # a fresh view, as the next command would have
    rec = store.get_image("big")
    assert (store.layer_paths(rec)[1] / "data/two").read_bytes() == noise(3_000_000, b"2")
    assert not partial.exists() and store.has_blob(digest)
    assert not [p for p in store.layers_dir.iterdir() if p.name.startswith(".tmp-")]


def test_concurrent_pulls_sharing_layers(registry, tmp_path):
    shared = [[directory("usr"), file(f"usr/lib{i}", noise(400_000, bytes([i])))]
              for i in range(3)]
    a = push_image(registry, "robust/a", "1", [*shared, [file("a", b"a")]])
    b = push_image(registry, "robust/b", "1", [*shared, [file("b", b"b")]])
    data = tmp_path / "data"
    procs = [start_pull(["-q", "--data-dir", str(data), f"{registry.host}/robust/{n}:1"],
                        tmp_path) for n in ("a", "b", "a")]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = Store(data)
    assert {r.name for r in store.list_images()} == {"a", "b"}
    layers = sorted(p.name for p in store.layers_dir.iterdir())
    expected = sorted({d.removeprefix("sha256:") for d in a.diff_ids + b.diff_ids})
    assert layers == expected
    assert not list((data / "blobs/partial").iterdir())


def test_disk_full_is_one_line_and_keeps_store_valid(registry, big, tmp_path):
    mnt = Path(tempfile.mkdtemp(prefix="sk-enospc-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        proc = run_pull(["--data-dir", str(mnt / "data"), f"{registry.host}/robust/big:1"],
                        tmp_path)
        assert_one_error(proc)
        assert "no space left" in proc.stderr or "disk full" in proc.stderr, proc.stderr
        store = Store(mnt / "data")
        assert not store.list_images()
        assert not [p for p in store.layers_dir.iterdir() if p.name.startswith(".tmp-")]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def test_data_dir_without_xattr_support(registry, big, tmp_path):
    mnt = Path(tempfile.mkdtemp(prefix="sk-ramfs-"))
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], check=True)
    try:
        proc = run_pull(["--data-dir", str(mnt / "data"), f"{registry.host}/robust/big:1"],
                        tmp_path)
        assert_one_error(proc, "does not support")
        with pytest.raises(StoreError):
            pull_image(Store(mnt / "data2"), f"{registry.host}/robust/big:1",
                       registry_settings=settings())
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


@pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("umoci")),
                    reason="skopeo and umoci are needed for the independent extraction")
@pytest.mark.parametrize(("fmt", "compression"), [
    ("oci", "gzip"), ("docker", "gzip"), ("oci", "none"), ("oci", "zstd"),
])
def test_merged_view_matches_skopeo_umoci(registry, tmp_path, fmt, compression):
    """Our overlay view of a pulled image equals umoci's unpack of the same image.

    Debian's umoci (0.4.7) cannot read zstd layers, so a zstd image is compared against
    umoci's unpack of the gzip image with the same diff_ids.
    """
    tag = f"{fmt}-{compression}"
    im = push_image(registry, "robust/rich", tag, [BASE, TOP], fmt=fmt, compression=compression)
    ref_tag = tag
    if compression == "zstd":
        ref_tag = "oci-gzip"
        gz = push_image(registry, "robust/rich", ref_tag, [BASE, TOP])
        assert gz.diff_ids == im.diff_ids
    store = Store(tmp_path / "data")
    rec = pull_image(store, f"{registry.host}/robust/rich:{tag}", registry_settings=settings())
    assert rec.manifest_digest == im.manifest_digest
    layout, bundle, merged = tmp_path / "oci", tmp_path / "bundle", tmp_path / "merged"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                    f"docker://{registry.host}/robust/rich:{ref_tag}", f"oci:{layout}:1"],
                   check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:1", str(bundle)], check=True,
                   capture_output=True)
    merged.mkdir()
    lower = ":".join(str(p) for p in reversed(store.layer_paths(rec)))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}",
                    str(merged)], check=True)
    try:
        diffs = compare_trees(merged, bundle / "rootfs")
        hidden = (merged / "var/cache/a").exists(), (merged / "opt/app/old.py").exists()
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert diffs == []
    assert hidden == (False, False)
    assert (bundle / "rootfs/opt/app/new.py").exists()
