"""Manifest/index parsing, media type detection and platform selection."""

import json

import pytest

from registry.errors import ManifestError, PlatformError
from registry.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    OCI_INDEX,
    OCI_MANIFEST,
    Index,
    Manifest,
    Platform,
    detect_media_type,
    host_platform,
    normalize_platform,
    parse_config,
    parse_manifest,
    parse_platform,
    select_platform,
)

H = "sha256:" + "1" * 64
H2 = "sha256:" + "2" * 64


def manifest(media_type=OCI_MANIFEST, config_type="application/vnd.oci.image.config.v1+json",
             layer_type="application/vnd.oci.image.layer.v1.tar+gzip"):
    return json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": H, "size": 10},
        "layers": [{"mediaType": layer_type, "digest": H2, "size": 20}],
    }).encode()


def index(entries, media_type=OCI_INDEX):
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 5, "platform": p}
        for i, p in enumerate(entries)
    ]}).encode()


@pytest.mark.parametrize(("data", "header", "expected"), [
    (manifest(), OCI_MANIFEST, OCI_MANIFEST),
    (manifest(), "application/octet-stream", OCI_MANIFEST),  # from the document's field
    (manifest(DOCKER_MANIFEST), None, DOCKER_MANIFEST),
    (index([]), f"{OCI_INDEX}; charset=utf-8", OCI_INDEX),
    (b'{"schemaVersion": 2, "manifests": []}', None, OCI_INDEX),  # no mediaType field
    (b'{"schemaVersion": 2, "config": {}, "layers": []}', None, OCI_MANIFEST),
    (b'{"schemaVersion": 1, "fsLayers": []}', None, DOCKER_SCHEMA1),
])
def test_detect_media_type(data, header, expected):
    assert detect_media_type(data, header) == expected


def test_parse_manifest_kinds():
    m = parse_manifest(manifest(), OCI_MANIFEST)
    assert isinstance(m, Manifest)
    assert [(d.digest, d.size) for d in m.layers] == [(H2, 20)]
    m2 = parse_manifest(manifest(DOCKER_MANIFEST, "application/vnd.docker.container.image.v1+json",
                                 "application/vnd.docker.image.rootfs.diff.tar.gzip"),
                        DOCKER_MANIFEST)
    assert isinstance(m2, Manifest) and m2.config.digest == H
    ix = parse_manifest(index([{"os": "linux", "architecture": "amd64"}], DOCKER_LIST), DOCKER_LIST)
    assert isinstance(ix, Index) and ix.platforms() == ["linux/amd64"]


@pytest.mark.parametrize(("data", "media_type", "reason"), [
    (b'{"schemaVersion": 1}', DOCKER_SCHEMA1, "schema 1"),
    (b"not json", OCI_MANIFEST, "not valid JSON"),
    (b"[]", OCI_MANIFEST, "not a JSON object"),
    (b'{"layers": []}', OCI_MANIFEST, "no 'config'"),
    (manifest(config_type="application/vnd.oras.config.v1+json"), OCI_MANIFEST,
     "not a container image"),
    (manifest(layer_type="application/x-helm"), OCI_MANIFEST, "unsupported layer media type"),
    (manifest().replace(H2.encode(), b"md5:00"), OCI_MANIFEST, "unsupported digest"),
    (b'{"manifests": 3}', OCI_INDEX, "no 'manifests'"),
    (manifest(), "application/json", "unsupported manifest media type"),
])
def test_parse_manifest_rejects(data, media_type, reason):
    with pytest.raises(ManifestError, match=reason):
        parse_manifest(data, media_type)


def test_parse_config():
    cfg = parse_config(json.dumps({
        "os": "linux", "architecture": "arm64", "variant": "v8",
        "config": {"Env": ["A=1"], "WorkingDir": "/w"},
        "rootfs": {"type": "layers", "diff_ids": [H]}, "created": "2024-01-01T00:00:00Z",
    }).encode())
    assert cfg.diff_ids == [H]
    assert str(cfg.platform) == "linux/arm64"
    assert cfg.config["WorkingDir"] == "/w"
    with pytest.raises(ManifestError, match="diff_ids"):
        parse_config(b'{"rootfs": {"diff_ids": ["md5:1"]}}')


@pytest.mark.parametrize(("s", "expected"), [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("amd64", "linux/amd64"),
    ("linux/arm64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/aarch64", "linux/arm64"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/v6", "linux/arm/v6"),
    ("linux/armhf", "linux/arm/v7"),
    ("Linux/AMD64", "linux/amd64"),
])
def test_parse_platform(s, expected):
    assert str(parse_platform(s)) == expected


@pytest.mark.parametrize("s", ["", "linux/", "a/b/c/d", "/amd64"])
def test_parse_platform_rejects(s):
    with pytest.raises(PlatformError, match="invalid platform"):
        parse_platform(s)


def test_host_platform_is_normalized():
    p = host_platform()
    assert p.os == "linux" and p == normalize_platform(p)


MULTI = [
    {"os": "linux", "architecture": "amd64"},
    {"os": "linux", "architecture": "arm64", "variant": "v8"},
    {"os": "linux", "architecture": "arm", "variant": "v6"},
    {"os": "linux", "architecture": "arm", "variant": "v7"},
    {"os": "unknown", "architecture": "unknown"},  # buildkit attestation
]


@pytest.mark.parametrize(("wanted", "entry"), [
    ("linux/amd64", 0),
    ("linux/arm64", 1),
    ("linux/arm64/v8", 1),
    ("linux/arm", 3),
    ("linux/arm/v7", 3),
    ("linux/arm/v6", 2),
])
def test_select_platform(wanted, entry):
    ix = parse_manifest(index(MULTI), OCI_INDEX)
    assert isinstance(ix, Index)
    assert select_platform(ix, parse_platform(wanted)).digest == f"sha256:{entry:064x}"


def test_select_platform_arm64_entry_without_variant():
    ix = parse_manifest(index([{"os": "linux", "architecture": "arm64"}]), OCI_INDEX)
    assert isinstance(ix, Index)
    assert select_platform(ix, Platform("linux", "arm64", "v8")).digest == f"sha256:{0:064x}"


def test_select_platform_lists_available():
    ix = parse_manifest(index(MULTI), OCI_INDEX)
    assert isinstance(ix, Index)
    with pytest.raises(PlatformError) as exc:
        select_platform(ix, parse_platform("linux/s390x"))
    assert exc.value.available == ["linux/amd64", "linux/arm64/v8", "linux/arm/v6",
                                   "linux/arm/v7"]
    assert "available: linux/amd64, linux/arm64/v8, linux/arm/v6, linux/arm/v7" in str(exc.value)
