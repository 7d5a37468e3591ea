import json

import httpx

from tests.support.registry import OCI_CONFIG, OCI_MANIFEST, LocalRegistry, sha256


def test_push_and_fetch_roundtrip(registry: LocalRegistry) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                         "diff_ids": []}}).encode()
    cdigest = registry.push_blob("fixture/empty", config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": cdigest,
                                      "size": len(config)}, "layers": []}).encode()
    mdigest = registry.push_manifest("fixture/empty", "v1", manifest, OCI_MANIFEST)
    r = httpx.get(f"{registry.url}/v2/fixture/empty/manifests/v1",
                  headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert sha256(r.content) == mdigest
    assert r.headers["Docker-Content-Digest"] == mdigest


def test_auth_registry_refuses_anonymous(auth_registry: LocalRegistry) -> None:
    r = httpx.get(f"{auth_registry.url}/v2/")
    assert r.status_code == 401
    assert "Basic" in r.headers["WWW-Authenticate"]
    with auth_registry.client() as client:
        assert client.get("/v2/").status_code == 200
