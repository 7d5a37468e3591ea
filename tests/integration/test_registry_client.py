"""RegistryClient against a real docker-registry (and a fault-injecting TCP proxy)."""

import base64
import hashlib
import json

import pytest

from registry.auth import Credentials
from registry.client import RegistryClient
from registry.errors import (
    AuthError,
    DigestMismatchError,
    NotFoundError,
    PlatformError,
    UnreachableError,
)
from registry.transport import RegistryConfig
from tests.support.ocibuild import directory, file, push_image, push_index
from tests.support.registry import LocalRegistry, free_port
from tests.support.tcpproxy import FaultProxy

pytestmark = pytest.mark.integration


def cfg(tmp_path, **kw):
    kw.setdefault("environ", {})
    kw.setdefault("docker_config", tmp_path / "no-docker-config.json")
    kw.setdefault("backoff", 0.01)
    return RegistryConfig(**kw)


@pytest.fixture(scope="module")
def multiarch(registry: LocalRegistry):
    amd = push_image(registry, "client/multi", None,
                     [[directory("etc"), file("etc/arch", b"amd64")]])
    arm = push_image(registry, "client/multi", None, [[file("arch", b"arm64")]], arch="arm64",
                     variant="v8")
    armv7 = push_image(registry, "client/multi", None, [[file("arch", b"armv7")]], arch="arm",
                       variant="v7", fmt="docker")
    index = push_index(registry, "client/multi", "1.0", [amd, arm])
    mlist = push_index(registry, "client/multi", "list", [amd, armv7], fmt="docker")
    return {"amd": amd, "arm": arm, "armv7": armv7, "index": index, "list": mlist}


def test_resolve_by_tag_through_index(registry, multiarch, tmp_path):
    with RegistryClient(cfg(tmp_path)) as rc:
        r = rc.resolve(f"{registry.host}/client/multi:1.0", platform="linux/amd64")
        assert r.manifest_digest == multiarch["amd"].manifest_digest
        assert r.index_digest == multiarch["index"]
        assert r.config.diff_ids == multiarch["amd"].diff_ids
        r = rc.resolve(f"{registry.host}/client/multi:1.0", platform="linux/arm64")
        assert r.manifest_digest == multiarch["arm"].manifest_digest
        assert str(r.platform) == "linux/arm64"
        r = rc.resolve(f"{registry.host}/client/multi:list", platform="linux/arm/v7")
        assert r.manifest_digest == multiarch["armv7"].manifest_digest


def test_no_matching_platform_lists_available(registry, multiarch, tmp_path):
    with RegistryClient(cfg(tmp_path)) as rc, pytest.raises(PlatformError) as exc:
        rc.resolve(f"{registry.host}/client/multi:1.0", platform="linux/s390x")
    assert exc.value.available == ["linux/amd64", "linux/arm64/v8"]


def test_single_manifest_wrong_platform(registry, multiarch, tmp_path):
    ref = f"{registry.host}/client/multi@{multiarch['arm'].manifest_digest}"
    with RegistryClient(cfg(tmp_path)) as rc:
        assert rc.resolve(ref).manifest_digest == multiarch["arm"].manifest_digest
        with pytest.raises(PlatformError, match=r"available: linux/arm64"):
            rc.resolve(ref, platform="linux/amd64")


def test_by_digest_and_blob_stream(registry, multiarch, tmp_path):
    amd = multiarch["amd"]
    ref = f"{registry.host}/client/multi:ignored@{amd.manifest_digest}"
    with RegistryClient(cfg(tmp_path)) as rc:
        r = rc.resolve(ref)
        assert r.reference.digest == amd.manifest_digest
        layer = r.manifest.layers[0]
        assert b"".join(rc.stream_blob(r.reference, layer)) == amd.blobs[layer.digest]


def test_unknown_tag_and_repository(registry, multiarch, tmp_path):
    with RegistryClient(cfg(tmp_path)) as rc:
        with pytest.raises(NotFoundError, match=r"image client/multi:nope not found on registry"):
            rc.resolve(f"{registry.host}/client/multi:nope")
        with pytest.raises(NotFoundError, match="not found"):
            rc.resolve(f"{registry.host}/client/never-pushed:1")


def test_unreachable_registry(tmp_path):
    host = f"127.0.0.1:{free_port()}"
    with RegistryClient(cfg(tmp_path)) as rc, pytest.raises(UnreachableError) as exc:
        rc.resolve(f"{host}/a/b:1")
    assert f"registry {host} is unreachable" in exc.value.message


@pytest.fixture(scope="module")
def private_image(auth_registry: LocalRegistry):
    return push_image(auth_registry, "private/app", "1", [[file("secret", b"42")]])


def test_auth_registry_without_credentials(auth_registry, private_image, tmp_path):
    with RegistryClient(cfg(tmp_path)) as rc, pytest.raises(AuthError) as exc:
        rc.resolve(f"{auth_registry.host}/private/app:1")
    assert f"registry {auth_registry.host} requires authentication" in exc.value.message


@pytest.mark.parametrize("source", ["explicit", "env-json", "env-short", "docker-config"])
def test_auth_registry_credential_sources(auth_registry, private_image, tmp_path, source):
    host = auth_registry.host
    kw: dict = {}
    if source == "explicit":
        kw["credentials"] = {host: Credentials("tester", "s3cret")}
    elif source == "env-json":
        kw["environ"] = {"SANDKASTEN_REGISTRY_AUTH": json.dumps(
            {host: {"username": "tester", "password": "s3cret"}})}
    elif source == "env-short":
        kw["environ"] = {"SANDKASTEN_REGISTRY_AUTH": f"{host}=tester:s3cret"}
    else:
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"auths": {f"http://{host}": {
            "auth": base64.b64encode(b"tester:s3cret").decode()}}}))
        kw["docker_config"] = path
    with RegistryClient(cfg(tmp_path, **kw)) as rc:
        r = rc.resolve(f"{host}/private/app:1")
        assert r.manifest_digest == private_image.manifest_digest


def test_auth_registry_wrong_password(auth_registry, private_image, tmp_path):
    creds = {auth_registry.host: Credentials("tester", "wrong")}
    with RegistryClient(cfg(tmp_path, credentials=creds)) as rc, pytest.raises(AuthError) as exc:
        rc.resolve(f"{auth_registry.host}/private/app:1")
    assert "refused the credentials" in exc.value.message
    assert auth_registry.host in exc.value.message


@pytest.fixture(scope="module")
def big_image(registry: LocalRegistry):
    data = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB, incompressible enough
    noise = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(40_000))
    return push_image(registry, "client/big", "1", [[file("blob", noise + data)]],
                      compression="none")


def test_dropped_connection_resumes_with_range(registry, big_image, tmp_path):
    digest = big_image.layer_digests[0]
    with FaultProxy(registry.port, digest, cut_after=300_000, times=2) as proxy, \
            RegistryClient(cfg(tmp_path)) as rc:
        r = rc.resolve(f"{proxy.host}/client/big:1")
        data = b"".join(rc.stream_blob(r.reference, r.manifest.layers[0]))
        assert data == big_image.blobs[digest]
        assert proxy.faults == 2
        heads = [h.lower() for h in proxy.blob_requests]
        assert len(heads) == 3
        assert b"range:" not in heads[0]
        assert all(b"range: bytes=" in h for h in heads[1:])


def test_corrupted_blob_is_refused(registry, big_image, tmp_path):
    digest = big_image.layer_digests[0]
    with FaultProxy(registry.port, digest, flip_at=12_345, times=100) as proxy, \
            RegistryClient(cfg(tmp_path)) as rc:
        r = rc.resolve(f"{proxy.host}/client/big:1")
        with pytest.raises(DigestMismatchError, match="does not match its digest"):
            b"".join(rc.stream_blob(r.reference, r.manifest.layers[0]))


def test_docker_hub_names_go_to_mirrors_first(registry, tmp_path):
    """``python:1`` resolves through the first mirror that answers; Hub is never contacted."""
    im = push_image(registry, "library/mirrored", "1", [[file("from-mirror", b"yes")]])
    dead = f"127.0.0.1:{free_port()}"
    config = cfg(tmp_path, registry_mirrors=[f"http://{dead}", registry.host], max_attempts=1)
    with RegistryClient(config) as rc:
        r = rc.resolve("mirrored:1")
        assert r.endpoint == registry.host
        assert r.reference.registry == "docker.io"
        assert r.manifest_digest == im.manifest_digest
        layer = r.manifest.layers[0]
        assert b"".join(rc.stream_blob(r.reference, layer)) == im.blobs[layer.digest]
