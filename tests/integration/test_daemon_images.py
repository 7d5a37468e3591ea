"""Images as an API resource against a real registry: pull with Server-Sent Events
progress, list, delete; a re-pull under the same name is what the next session (pooled or
not) runs."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess, _tar_dir, daemon_factory, image_store
from tests.support.ocibuild import file, push_image
from tests.support.registry import LocalRegistry
from tests.support.rootfs import busybox_rootfs

__all__ = ["daemon_factory", "image_store"]

pytestmark = [pytest.mark.integration, pytest.mark.privileged]


def busybox_layer() -> bytes:
    with tempfile.TemporaryDirectory(prefix="sk-bb-") as tmp:
        root = busybox_rootfs(Path(tmp) / "rootfs")
        return _tar_dir(root, Path(tmp) / "l.tar").read_bytes()


def push_version(reg: LocalRegistry, base: bytes, version: str) -> str:
    img = push_image(reg, "tests/tiny", "latest",
                     [base, [file("etc/version", f"{version}\n".encode())]],
                     run_config={"Env": ["PATH=/usr/bin:/bin:/usr/sbin:/sbin"]})
    return img.manifest_digest


def pull(d: DaemonProcess, ref: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    with d.client(timeout=120) as c, c.stream("POST", "/v1/images/pull",
                                              json={"ref": ref, "name": name}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    return events


def sessions_ready(d: DaemonProcess) -> list[str]:
    root = d.data_dir / "sessions"
    return [p.name for p in root.iterdir() if (p / "state.json").exists()]


def test_pull_list_pool_repull_delete(registry: LocalRegistry, daemon_factory: Any) -> None:
    base = busybox_layer()
    digest1 = push_version(registry, base, "v1")
    d: DaemonProcess = daemon_factory(pool={"enabled": True, "images": {"tiny": 1}})
    ref = f"{registry.host}/tests/tiny:latest"

    events = pull(d, ref, "tiny")
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and "error" not in kinds, events
    assert any(e == "progress" and ev.get("kind") == "layer_done" for e, ev in events)
    done = events[-1][1]
    assert (done["name"], done["digest"], done["layers"]) == ("tiny", digest1, 2)
    with d.client() as c:
        listed = {i["name"]: i for i in c.get("/v1/images").json()["images"]}
        assert listed["tiny"]["digest"] == digest1 and listed["tiny"]["source"] == "registry"

        # the pool fills with v1 once the image exists (the next create configures it)
        s1 = c.post("/v1/sessions", json={"image": "tiny"}).json()["id"]
        assert c.post(f"/v1/sessions/{s1}/exec",
                      json={"cmd": "cat /etc/version"}).json()["output"] == "v1\n"
        deadline = time.monotonic() + 30
        while not [n for n in sessions_ready(d) if n.startswith("sb-")]:
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.1)
        time.sleep(0.3)

        digest2 = push_version(registry, base, "v2")
        assert digest2 != digest1
        assert pull(d, ref, "tiny")[-1][1]["digest"] == digest2
        s2 = c.post("/v1/sessions", json={"image": "tiny"}).json()["id"]
        out = c.post(f"/v1/sessions/{s2}/exec", json={"cmd": "cat /etc/version"}).json()
        assert out["output"] == "v2\n"  # never the stale pooled v1 sandbox

        r = c.delete("/v1/images/tiny")
        assert (r.status_code, r.json()["code"]) == (409, "image_in_use")
        c.delete(f"/v1/sessions/{s1}")
        c.delete(f"/v1/sessions/{s2}")
        assert c.delete("/v1/images/tiny").json() == {"ok": True}
        assert "tiny" not in {i["name"] for i in c.get("/v1/images").json()["images"]}
        r = c.post("/v1/sessions", json={"image": "tiny"})
        assert (r.status_code, r.json()["code"]) == (404, "image_not_found")


def test_pull_errors_arrive_as_events(registry: LocalRegistry, daemon_factory: Any) -> None:
    d: DaemonProcess = daemon_factory()
    events = pull(d, f"{registry.host}/tests/absent:1", "absent")
    assert [e for e, _ in events][-1] == "error"
    assert events[-1][1]["code"] and events[-1][1]["error"]
    assert "ERROR internal error" not in d.log()
