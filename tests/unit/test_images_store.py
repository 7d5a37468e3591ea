"""The store's guarantees, settings precedence and filesystem checks."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgbuilder import fscheck
from imgbuilder.errors import ImageNotFoundError, LayerError, StoreError
from imgbuilder.images import ImageRecord, LayerRecord, runtime_config
from imgbuilder.layers import add_layer
from imgbuilder.settings import DEFAULT_DATA_DIR, load_registry_settings, resolve_data_dir
from imgbuilder.store import Store
from tests.support.images import TarBuilder, compress, sha256


def test_record_json_round_trip() -> None:
    rec = ImageRecord(name="py", reference="docker.io/library/python:3.12", platform="linux/arm64",
                      config={"Env": ["A=1"], "WorkingDir": "/w"}, flattened=True,
                      layers=[LayerRecord("sha256:" + "a" * 64, "sha256:" + "b" * 64, 10,
                                          "application/vnd.oci.image.layer.v1.tar+zstd", 20)])
    again = ImageRecord.from_json(rec.to_json() + "")
    assert again == rec and again.size == 20
    assert ImageRecord.from_json('{"name": "x", "future_key": 1}').name == "x"
    with pytest.raises(StoreError, match="corrupt image record"):
        ImageRecord.from_json("{not json")


def test_runtime_config_keeps_what_sessions_use() -> None:
    cfg = {"config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/app", "User": "1000",
                      "Labels": {"a": "b"}, "Entrypoint": None, "Healthcheck": {"x": 1}}}
    assert runtime_config(cfg) == {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/app",
                                   "User": "1000", "Labels": {"a": "b"}}


def test_layer_is_published_only_when_verified(tmp_path: Path, require_root: None) -> None:
    store = Store(tmp_path)
    tar = TarBuilder().file("a", b"a").bytes()
    with pytest.raises(LayerError, match="diff_id mismatch"):
        add_layer(store, io.BytesIO(compress(tar, "gzip")), expected_diff_id=sha256(b"other"))
    with pytest.raises(LayerError, match="digest mismatch"):
        add_layer(store, io.BytesIO(tar), expected_digest=sha256(b"other"))
    assert list(store.layers_dir.iterdir()) == []
    rec = add_layer(store, io.BytesIO(compress(tar, "zstd")), expected_diff_id=sha256(tar))
    assert rec.diff_id == sha256(tar) and rec.media_type.endswith("+zstd")
    again = add_layer(store, io.BytesIO(tar))  # the same layer twice: one directory
    assert again.diff_id == rec.diff_id and len(list(store.layers_dir.iterdir())) == 1


def test_stale_tmp_dirs_are_removed_on_open(tmp_path: Path) -> None:
    store = Store(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = store.layers_dir / f".tmp-{dead}-abc"
    (stale / "half").mkdir(parents=True)
    mine = store.new_layer_tmpdir()
    live_other = store.layers_dir / f".tmp-{os.getppid()}-xyz"
    live_other.mkdir()
    Store(tmp_path)
    assert not stale.exists() and mine.exists() and live_other.exists()


def test_image_not_found_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError) as e:
        Store(tmp_path).get_image("python")
    assert "imgbuilder list" in e.value.message
    assert "imgbuilder import --name python --tar" in (e.value.hint or "")


def test_names_cannot_escape(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(StoreError, match="invalid image name"):
            store.get_image(bad)
    with pytest.raises(StoreError):
        store.lease("../../etc/x", ImageRecord(name="a"))


def test_commit_blob_is_atomic_and_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = sha256(b"blob")
    for _ in range(2):
        tmp = store.partial_blob_path(digest)
        tmp.write_bytes(b"blob")
        store.commit_blob(tmp, digest)
    assert store.has_blob(digest) and store.blob_path(digest).read_bytes() == b"blob"
    assert not store.partial_blob_path(digest).exists()


def test_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sandkasten.yaml"
    cfg.write_text('data_dir: "/from/config"\ninsecure_registries: ["10.0.0.1:5000"]\n'
                   'registry_mirrors: ["https://mirror.example"]\n')
    monkeypatch.delenv("SANDKASTEN_DATA_DIR", raising=False)
    monkeypatch.delenv("SANDKASTEN_CONFIG", raising=False)
    assert resolve_data_dir(None, None) == DEFAULT_DATA_DIR
    assert resolve_data_dir(None, cfg) == Path("/from/config")
    monkeypatch.setenv("SANDKASTEN_CONFIG", str(cfg))
    assert resolve_data_dir(None, None) == Path("/from/config")
    monkeypatch.setenv("SANDKASTEN_DATA_DIR", "/from/env")
    assert resolve_data_dir(None, cfg) == Path("/from/env")
    assert resolve_data_dir("/from/flag", cfg) == Path("/from/flag")
    assert load_registry_settings(cfg) == (["10.0.0.1:5000"], ["https://mirror.example"])
    with pytest.raises(StoreError, match="config file not found"):
        load_registry_settings(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("magic", "name"), [(0x5346544E, "NTFS"), (0x01021997, "9p")])
def test_windows_filesystems_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       magic: int, name: str) -> None:
    monkeypatch.setattr(fscheck, "fs_magic", lambda _p: magic)
    with pytest.raises(StoreError, match=name) as e:
        fscheck.check_layer_filesystem(tmp_path)
    assert "/mnt/c" in (e.value.hint or "")


def test_this_filesystem_passes_the_probe(tmp_path: Path, require_root: None) -> None:
    fscheck.check_layer_filesystem(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fs_magic_reads_statfs() -> None:
    assert fscheck.fs_magic(Path("/proc")) == 0x9FA0  # PROC_SUPER_MAGIC
