"""A real OCI registry for tests: Debian's ``docker-registry`` (CNCF distribution) on 127.0.0.1.

``LocalRegistry`` starts one process on a free loopback port with its storage in a temp
directory, optionally behind htpasswd basic auth, and stops it on ``close()``.
``push_image`` uploads blobs and a manifest through the distribution API, so tests build
their own images (any media types, indexes, zstd layers) without Docker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class LocalRegistry:
    """One docker-registry process. ``users`` maps user → password to require basic auth."""

    users: dict[str, str] = field(default_factory=dict)
    port: int = 0
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sk-registry-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> LocalRegistry:
        self.port = self.port or free_port()
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": "sandkasten-tests"},
        }
        if self.users:
            htpasswd = self.root / "htpasswd"
            for i, (user, password) in enumerate(self.users.items()):
                flags = "-Bbc" if i == 0 else "-Bb"
                subprocess.run(
                    ["htpasswd", flags, str(htpasswd), user, password],
                    check=True,
                    capture_output=True,
                )
            config["auth"] = {"htpasswd": {"realm": "sandkasten-tests", "path": str(htpasswd)}}
        cfg = self.root / "config.yml"
        cfg.write_text(json.dumps(config))  # JSON is YAML
        with open(self.root / "registry.log", "wb") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "docker-registry exited: " + (self.root / "registry.log").read_text()
                )
            try:
                httpx.get(f"{self.url}/v2/", timeout=0.5)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start within 15 s")

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- pushing -------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        auth = None
        if self.users:
            user, password = next(iter(self.users.items()))
            auth = httpx.BasicAuth(user, password)
        return httpx.Client(base_url=self.url, auth=auth, timeout=30)

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        with self.client() as c:
            if c.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
                return digest
            r = c.post(f"/v2/{repo}/blobs/uploads/")
            r.raise_for_status()
            location = r.headers["Location"]
            sep = "&" if "?" in location else "?"
            r = c.put(
                f"{location}{sep}digest={digest}",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            r.raise_for_status()
        return digest

    def push_manifest(self, repo: str, ref: str, manifest: bytes, media_type: str) -> str:
        with self.client() as c:
            r = c.put(
                f"/v2/{repo}/manifests/{ref}",
                content=manifest,
                headers={"Content-Type": media_type},
            )
            r.raise_for_status()
        return sha256(manifest)
