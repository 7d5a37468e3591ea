"""Decompression by magic bytes and media type, streaming, with errors in the caller's thread."""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import pytest
import zstandard

from imgbuilder import compression
from imgbuilder.compression import detect, kind_from_media_type, open_decompressed
from imgbuilder.errors import LayerError
from tests.support.images import TarBuilder, compress

TAR = TarBuilder().file("a", b"hello" * 100_000).file("b", bytes(range(256)) * 5000).bytes()
DIFF_ID = "sha256:" + hashlib.sha256(TAR).hexdigest()


@pytest.mark.parametrize(("media_type", "kind"), [
    ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    ("application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
    ("application/vnd.oci.image.layer.v1.tar", "none"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"),
    ("application/x-tar", "none"),
    (None, None),
    ("application/octet-stream", None),
])
def test_media_types(media_type: str | None, kind: str | None) -> None:
    assert kind_from_media_type(media_type) == kind


@pytest.mark.parametrize("media_type", ["application/vnd.oci.image.layer.v1.tar+bzip2",
                                        "application/vnd.oci.image.layer.v1.tar+encrypted"])
def test_unsupported_media_types(media_type: str) -> None:
    with pytest.raises(LayerError, match="unsupported"):
        kind_from_media_type(media_type)


@pytest.mark.parametrize(("head", "kind"), [
    (b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"ustar", "none")])
def test_detect(head: bytes, kind: str) -> None:
    assert detect(head) == kind


@pytest.mark.parametrize("head", [b"BZh91AY", b"\xfd7zXZ\x00\x00"])
def test_detect_refuses_bzip2_and_xz(head: bytes) -> None:
    with pytest.raises(LayerError, match="not supported"):
        detect(head)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("declared", [None, "application/vnd.oci.image.layer.v1.tar+gzip"])
def test_round_trip_by_magic_whatever_is_declared(kind: str, declared: str | None) -> None:
    with open_decompressed(io.BytesIO(compress(TAR, kind)), declared) as s:
        assert s.read() == TAR
        assert s.compression == kind
        assert s.diff_id() == DIFF_ID


def test_multi_member_gzip_and_multi_frame_zstd() -> None:
    half = len(TAR) // 2
    gz = gzip.compress(TAR[:half]) + gzip.compress(TAR[half:])
    zc = zstandard.ZstdCompressor()
    zs = zc.compress(TAR[:half]) + zc.compress(TAR[half:])
    for blob in (gz, zs):
        with open_decompressed(io.BytesIO(blob)) as s:
            assert s.read() == TAR and s.diff_id() == DIFF_ID


def test_read1_and_peek_stream_in_chunks() -> None:
    with open_decompressed(io.BytesIO(compress(TAR, "zstd"))) as s:
        head = s.peek()
        assert TAR.startswith(head[:512])
        got = bytearray()
        while chunk := s.read1(70_000):
            assert len(chunk) <= 70_000
            got += chunk
        assert bytes(got) == TAR


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_truncated_compressed_stream(kind: str) -> None:
    blob = compress(TAR, kind)
    with open_decompressed(io.BytesIO(blob[: len(blob) // 2])) as s, \
            pytest.raises(LayerError, match=r"truncated|corrupt"):
        s.read()


def test_corrupt_gzip_is_a_layer_error() -> None:
    blob = bytearray(compress(TAR, "gzip"))
    blob[100:140] = b"\xff" * 40
    with open_decompressed(io.BytesIO(bytes(blob))) as s, \
            pytest.raises(LayerError, match="gzip"):
        s.read()


def test_not_a_tar_at_all() -> None:
    with pytest.raises(LayerError, match="not a tar"):
        open_decompressed(io.BytesIO(b"<html>404</html>" * 100),
                          "application/vnd.oci.image.layer.v1.tar+gzip")


def test_diff_id_needs_eof() -> None:
    with open_decompressed(io.BytesIO(compress(TAR, "gzip"))) as s:
        s.read(10)
        with pytest.raises(LayerError, match="before the stream"):
            s.diff_id()


def test_close_midway_stops_the_producer() -> None:
    big = compress(TAR * 20, "zstd")
    s = open_decompressed(io.BytesIO(big))
    s.read(1000)
    s.close()
    assert not s._thread.is_alive()


@pytest.mark.parametrize("external", [True, False])
def test_zstd_from_a_file_with_and_without_the_zstd_binary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool) -> None:
    if not external:
        monkeypatch.setattr(compression, "ZSTD_BIN", None)
    elif compression.ZSTD_BIN is None:
        pytest.skip("the zstd binary is not installed")
    path = tmp_path / "layer.tar.zst"
    path.write_bytes(compress(TAR, "zstd"))
    with open(path, "rb") as f, open_decompressed(f) as s:
        assert (s._ext is not None) == external
        assert s.read() == TAR and s.diff_id() == DIFF_ID
        assert s.compressed_bytes == path.stat().st_size
