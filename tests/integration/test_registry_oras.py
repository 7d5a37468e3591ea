"""An OCI artifact pushed by the ORAS client is refused by pull with one clear error.

``oras`` (the design card's OCI-artifact library) is the independent producer here: it
writes a manifest whose config is not an image config, as ``oras push`` does.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from registry.client import RegistryClient
from registry.errors import ManifestError
from registry.transport import RegistryConfig

pytestmark = pytest.mark.integration


def test_oras_artifact_is_not_an_image(registry, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oras/requests may warn on plain HTTP
        import oras.provider

        artifact = tmp_path / "notes.txt"
        artifact.write_text("not a root filesystem\n")
        monkeypatch.chdir(tmp_path)  # oras stores relative file names
        client = oras.provider.Registry(hostname=registry.host, insecure=True)
        resp = client.push(target=f"{registry.host}/artifacts/notes:1", files=[artifact.name],
                           quiet=True)
        assert resp.status_code in (200, 201)
    cfg = RegistryConfig(environ={}, docker_config=Path("/none"))
    with RegistryClient(cfg) as rc, pytest.raises(ManifestError) as exc:
        rc.resolve(f"{registry.host}/artifacts/notes:1")
    assert "not a container image" in exc.value.message
    assert "artifact" in (exc.value.hint or "")
