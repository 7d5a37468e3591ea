"""The REST API over real HTTP (uvicorn) with the fake runtime: shapes, codes, lifecycle."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandkasten.api import create_app
from sandkasten.config import Config, load_config
from sandkasten.errors import ConfigError
from tests.support.daemon import serve_app
from tests.support.fake_runtime import FakeImages, FakeRuntime

KEY = "sk-sandbox-test"
H = {"Authorization": f"Bearer {KEY}"}
SESSION_KEYS = {"id", "image", "status", "cwd", "workspace_id", "created_at", "expires_at"}


@dataclass
class Api:
    url: str
    c: httpx.Client
    runtime: FakeRuntime
    images: FakeImages
    config: Config

    def session(self, **body: Any) -> str:
        r = self.c.post("/v1/sessions", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def exec(self, sid: str, cmd: str, **kw: Any) -> dict[str, Any]:
        r = self.c.post(f"/v1/sessions/{sid}/exec", json={"cmd": cmd, **kw})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


def make_config(tmp_path: Path, **env: str) -> Config:
    base = {"SANDKASTEN_DATA_DIR": str(tmp_path / "data"), "SANDKASTEN_API_KEY": KEY}
    return load_config(None, {**base, **env})


@contextlib.contextmanager
def running(config: Config, runtime: FakeRuntime, images: FakeImages) -> Iterator[Api]:
    app = create_app(config, runtime, images=images, reaper_interval=0.1)
    with serve_app(app) as url, httpx.Client(base_url=url, headers=H, timeout=10) as c:
        yield Api(url, c, runtime, images, config)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with running(
        make_config(tmp_path), FakeRuntime(tmp_path / "rt"), FakeImages(["python", "busybox"])
    ) as a:
        yield a


def err(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text
    return body


# ---- the seed's flow -----------------------------------------------------------------------
def test_health_needs_no_auth(api: Api) -> None:
    r = httpx.get(api.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_seed_flow_with_curl_style_bodies(api: Api) -> None:
    form = {**H, "Content-Type": "application/x-www-form-urlencoded"}  # what curl -d sends
    r = httpx.post(api.url + "/v1/sessions", headers=form, content='{"image":"python"}')
    assert r.status_code == 201
    s = r.json()
    assert set(s) == SESSION_KEYS
    assert (s["image"], s["status"], s["cwd"], s["workspace_id"]) == (
        "python",
        "running",
        "/workspace",
        None,
    )
    assert (
        len(s["id"]) == 12 and s["created_at"].endswith("Z") and s["expires_at"] > s["created_at"]
    )
    sid = s["id"]
    r = httpx.post(
        f"{api.url}/v1/sessions/{sid}/exec", headers=form, content='{"cmd":"echo hello world"}'
    )
    body = r.json()
    assert list(body) == ["exit_code", "cwd", "output", "truncated", "duration_ms"]
    assert body["exit_code"] == 0 and body["output"] == "hello world\n"
    assert body["cwd"] == "/workspace" and body["truncated"] is False
    r = httpx.post(
        f"{api.url}/v1/sessions/{sid}/fs/write",
        headers=form,
        content='{"path":"/workspace/test.py","text":"print(42)"}',
    )
    assert r.json() == {"ok": True, "path": "/workspace/test.py", "bytes": 9}
    r = httpx.get(
        f"{api.url}/v1/sessions/{sid}/fs/read", params={"path": "/workspace/test.py"}, headers=H
    )
    assert r.json() == {
        "path": "/workspace/test.py",
        "content_base64": base64.b64encode(b"print(42)").decode(),
        "truncated": False,
    }
    assert httpx.delete(f"{api.url}/v1/sessions/{sid}", headers=H).json() == {"ok": True}
    err(api.c.get(f"/v1/sessions/{sid}"), 404, "session_not_found")


def test_no_content_type_is_json_too(api: Api) -> None:
    r = httpx.post(api.url + "/v1/sessions", headers=H, content=b'{"image":"busybox"}')
    assert r.status_code == 201 and r.json()["image"] == "busybox"
    r = httpx.post(api.url + "/v1/sessions", headers=H)  # no body at all: every default
    assert r.status_code == 201 and r.json()["image"] == "python"


def test_default_image_and_listing(api: Api) -> None:
    a = api.session()
    b = api.session(image="busybox")
    ids = [s["id"] for s in api.c.get("/v1/sessions").json()]
    assert ids == [a, b]
    assert api.c.get(f"/v1/sessions/{a}").json()["image"] == "python"
    assert set(api.images.leases) == {a, b}


def test_state_persists_between_execs(api: Api) -> None:
    sid = api.session()
    api.exec(sid, "export GREETING=hi")
    api.exec(sid, "cd /tmp")
    r = api.exec(sid, "echo $GREETING; pwd")
    assert r["output"] == "hi\n/tmp\n" and r["cwd"] == "/tmp"
    assert api.c.get(f"/v1/sessions/{sid}").json()["cwd"] == "/tmp"


def test_split_output_shape(api: Api) -> None:
    sid = api.session()
    r = api.exec(sid, "echo out; echo err >&2; exit 3", split_output=True)
    assert r == {
        "exit_code": 3,
        "stdout": "out\n",
        "stderr": "err\n",
        "cwd": "/workspace",
        "duration_ms": r["duration_ms"],
    }


def test_timeout_is_capped_and_reported(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, SANDKASTEN_DEFAULTS__MAX_EXEC_TIMEOUT_MS="200")
    with running(cfg, FakeRuntime(tmp_path / "rt"), FakeImages()) as api:
        sid = api.session()
        t0 = time.monotonic()
        r = api.exec(sid, "sleep 5", timeout_ms=60_000)
        assert time.monotonic() - t0 < 2
        assert r["timed_out"] is True and r["exit_code"] == 124


def test_stream_events(api: Api) -> None:
    sid = api.session()
    with api.c.stream(
        "POST", f"/v1/sessions/{sid}/exec/stream", json={"cmd": "echo a; echo b; exit 2"}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = [
        (b.split("\n")[0][7:], json.loads(b.split("\n")[1][6:])) for b in text.strip().split("\n\n")
    ]
    assert [e for e, _ in events] == ["chunk", "chunk", "done"]
    assert "".join(d["chunk"] for e, d in events if e == "chunk") == "a\nb\n"
    assert all(isinstance(d["timestamp"], int) for e, d in events if e == "chunk")
    assert events[-1][1] == {
        "exit_code": 2,
        "cwd": "/workspace",
        "duration_ms": events[-1][1]["duration_ms"],
        "truncated": False,
    }


def test_stats(api: Api) -> None:
    sid = api.session(mem_limit_mb=64)
    s = api.c.get(f"/v1/sessions/{sid}/stats").json()
    assert set(s) == {"memory_bytes", "memory_limit", "cpu_usage_usec", "pids"}
    assert s["memory_limit"] == 64 << 20


def test_files_list_upload_archive(api: Api) -> None:
    sid = api.session()
    r = api.c.post(
        f"/v1/sessions/{sid}/fs/write",
        json={"path": "bin.dat", "content_base64": base64.b64encode(b"\0\1\2").decode()},
    )
    assert r.json()["path"] == "/workspace/bin.dat"
    r = api.c.post(
        f"/v1/sessions/{sid}/fs/upload",
        files=[("file", ("a.txt", b"A")), ("files", ("b.txt", b"BB"))],
        data={"path": "/workspace/up"},
    )
    assert r.json() == {
        "ok": True,
        "files": [
            {"path": "/workspace/up/a.txt", "bytes": 1},
            {"path": "/workspace/up/b.txt", "bytes": 2},
        ],
    }
    listing = api.c.get(f"/v1/sessions/{sid}/fs/list", params={"path": "/workspace"}).json()
    assert listing["path"] == "/workspace"
    assert {(e["name"], e["type"]) for e in listing["entries"]} == {
        ("bin.dat", "file"),
        ("up", "dir"),
    }
    r = api.c.get(f"/v1/sessions/{sid}/fs/read", params={"path": "up/b.txt", "max_bytes": 1})
    assert r.json()["truncated"] is True and base64.b64decode(r.json()["content_base64"]) == b"B"
    r = api.c.get(f"/v1/sessions/{sid}/fs/archive", params={"path": "/workspace"})
    assert r.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
        names = sorted(tf.getnames())
        assert names == ["bin.dat", "up/", "up/a.txt", "up/b.txt"] or names == [
            "bin.dat",
            "up",
            "up/a.txt",
            "up/b.txt",
        ]
        f = tf.extractfile("up/b.txt")
        assert f is not None and f.read() == b"BB"


# ---- workspaces ----------------------------------------------------------------------------
def test_workspace_outlives_sessions(api: Api) -> None:
    r = api.c.post(
        "/v1/workspaces/proj-1/fs/write", json={"path": "/workspace/notes/a.txt", "text": "seeded"}
    )
    assert r.json() == {"ok": True, "path": "/workspace/notes/a.txt", "bytes": 6}
    sid = api.session(workspace_id="proj-1")
    assert api.c.get(f"/v1/sessions/{sid}").json()["workspace_id"] == "proj-1"
    assert api.exec(sid, "cat notes/a.txt")["output"] == "seeded"
    api.c.post(f"/v1/sessions/{sid}/fs/write", json={"path": "made.txt", "text": "by session"})
    ws = api.c.get("/v1/workspaces").json()["workspaces"]
    assert [(w["id"], w["sessions"]) for w in ws] == [("proj-1", [sid])]
    err(api.c.delete("/v1/workspaces/proj-1"), 409, "workspace_in_use")
    api.c.delete(f"/v1/sessions/{sid}")
    sid2 = api.session(workspace_id="proj-1")
    assert api.exec(sid2, "cat made.txt")["output"] == "by session"
    api.c.delete(f"/v1/sessions/{sid2}")
    assert api.c.delete("/v1/workspaces/proj-1").json() == {"ok": True}
    assert api.c.get("/v1/workspaces").json() == {"workspaces": []}
    err(api.c.delete("/v1/workspaces/proj-1"), 404, "workspace_not_found")


def test_workspace_archive_roundtrip(api: Api) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in [("src/main.py", b"print(1)\n"), ("README", b"hi")]:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o4755
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("etc-link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tf.addfile(link)
    r = api.c.put("/v1/workspaces/imp/archive", content=buf.getvalue())
    assert r.json() == {"ok": True, "files": 2, "dirs": 0, "symlinks": 1, "skipped": 0, "bytes": 11}
    root = api.config.data_dir / "workspaces/imp"
    assert (root / "src/main.py").stat().st_mode & 0o7777 == 0o755  # setuid dropped
    r = api.c.get("/v1/workspaces/imp/archive")
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
        assert tf.getmember("etc-link").issym()
        f = tf.extractfile("src/main.py")
        assert f is not None and f.read() == b"print(1)\n"
        assert "passwd" not in " ".join(tf.getnames())


def test_workspace_writes_never_follow_symlinks(api: Api, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    api.c.post("/v1/workspaces/w/fs/write", json={"path": "x", "text": "x"})
    os.symlink(outside, api.config.data_dir / "workspaces/w/escape")
    r = api.c.post("/v1/workspaces/w/fs/write", json={"path": "escape/pwn", "text": "x"})
    err(r, 409, "path_conflict")
    assert list(outside.iterdir()) == []
    bad = io.BytesIO()
    with tarfile.open(fileobj=bad, mode="w") as tf:
        ti = tarfile.TarInfo("escape/pwn")
        tf.addfile(ti, io.BytesIO(b""))
    err(api.c.put("/v1/workspaces/w/archive", content=bad.getvalue()), 409, "path_conflict")
    dots = io.BytesIO()
    with tarfile.open(fileobj=dots, mode="w") as tf:
        tf.addfile(tarfile.TarInfo("../../pwn"), io.BytesIO(b""))
    err(api.c.put("/v1/workspaces/w/archive", content=dots.getvalue()), 400, "invalid_path")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("wid", ["..", ".hidden", "a/b", "a" * 129, "-x", "%2e%2e"])
def test_workspace_ids_are_validated(api: Api, wid: str) -> None:
    r = api.c.post("/v1/sessions", json={"workspace_id": wid})
    err(r, 400, "invalid_request")
    assert not (api.config.data_dir.parent / "b").exists()


# ---- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("GET", "/v1/workspaces"),
        ("GET", "/v1/images"),
        ("DELETE", "/v1/sessions/x"),
    ],
)
@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Bearer wrong",
        "Basic c2stc2FuZGJveC10ZXN0",
        "Bearer",
        "Bearer sk-sandbox-tes",
        "bearer sk-sandbox-test2",
    ],
)
def test_auth_failures(api: Api, method: str, path: str, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    r = httpx.request(method, api.url + path, headers=headers)
    err(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"


def test_error_codes(api: Api) -> None:
    sid = api.session()
    body = err(api.c.post("/v1/sessions", json={"image": "ruby"}), 404, "image_not_found")
    assert "ruby" in body["error"] and "sandkasten image pull --name ruby" in body["hint"]
    err(api.c.post("/v1/sessions", content=b'{"image":'), 400, "invalid_request")
    err(api.c.post("/v1/sessions", content=b"[1]"), 400, "invalid_request")
    err(api.c.post("/v1/sessions", json={"image": "python", "bogus": 1}), 400, "invalid_request")
    err(api.c.post("/v1/sessions", json={"ttl_seconds": -1}), 400, "invalid_request")
    err(api.c.post(f"/v1/sessions/{sid}/exec", json={}), 400, "invalid_request")
    err(api.c.post(f"/v1/sessions/{sid}/exec", json={"cmd": "  "}), 400, "invalid_request")
    big = err(
        api.c.post(f"/v1/sessions/{sid}/exec", json={"cmd": "x" * ((1 << 20) + 1)}),
        400,
        "cmd_too_large",
    )
    assert "fs/write" in big["hint"]
    assert api.c.post(f"/v1/sessions/{sid}/fs/write", json={"path": "a"}).json()["bytes"] == 0
    err(
        api.c.post(
            f"/v1/sessions/{sid}/fs/write",
            json={"path": "a", "text": "x", "content_base64": "eA=="},
        ),
        400,
        "invalid_request",
    )
    err(
        api.c.post(f"/v1/sessions/{sid}/fs/write", json={"path": "a", "content_base64": "!!"}),
        400,
        "invalid_request",
    )
    err(api.c.get(f"/v1/sessions/{sid}/fs/read", params={"path": "/nope"}), 404, "file_not_found")
    err(api.c.get(f"/v1/sessions/{sid}/fs/read"), 400, "invalid_request")
    err(
        api.c.get(f"/v1/sessions/{sid}/fs/archive", params={"path": "/nope"}), 404, "file_not_found"
    )
    r = api.c.post(f"/v1/sessions/{sid}/fs/upload", data={"path": "/workspace"})
    assert r.json() == {"ok": True, "files": []}
    err(api.c.post("/v1/sessions/nope/exec", json={"cmd": "true"}), 404, "session_not_found")
    err(api.c.get("/v1/nothing-here"), 404, "not_found")
    err(api.c.put("/v1/sessions"), 405, "method_not_allowed")
    r = api.c.post("/v1/workspaces/w/fs/write", json={"path": "/etc/../../x", "text": "x"})
    assert r.json()["path"] == "/workspace/x"  # a workspace is its own root
    err(
        api.c.put("/v1/workspaces/w/archive", content=b"not a tar at all" * 100),
        400,
        "invalid_archive",
    )
    err(api.c.delete("/v1/images/python"), 409, "image_in_use")
    err(api.c.delete("/v1/images/ruby"), 404, "image_not_found")


def test_body_over_limit_is_413(api: Api) -> None:
    import socket

    sid = api.session()
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"POST /v1/sessions/{sid}/fs/write HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {65 << 20}\r\n\r\n".encode()
        )
        resp = b""
        while b"}" not in resp:
            chunk = s.recv(4096)
            if not chunk:
                break
            resp += chunk
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["code"] == "payload_too_large"


def test_policy_refusals_are_422(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path, SANDKASTEN_ALLOWED_IMAGES="python", SANDKASTEN_WORKSPACE__ENABLED="false"
    )
    with running(cfg, FakeRuntime(tmp_path / "rt"), FakeImages(["python", "busybox"])) as api:
        body = err(api.c.post("/v1/sessions", json={"image": "busybox"}), 422, "image_not_allowed")
        assert "python" in body["hint"]
        err(api.c.post("/v1/sessions", json={"workspace_id": "w"}), 422, "workspaces_disabled")
        err(
            api.c.post("/v1/workspaces/w/fs/write", json={"path": "a", "text": ""}),
            422,
            "workspaces_disabled",
        )


def test_session_limit_is_409(tmp_path: Path) -> None:
    with running(
        make_config(tmp_path, SANDKASTEN_MAX_SESSIONS="1"),
        FakeRuntime(tmp_path / "rt"),
        FakeImages(),
    ) as api:
        api.session()
        err(api.c.post("/v1/sessions", json={}), 409, "session_limit")


def test_internal_errors_are_500_with_request_id(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    sid = api.session()

    async def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("secret detail")

    api.runtime.live[sid].stats = broken  # type: ignore[method-assign]
    r = api.c.get(f"/v1/sessions/{sid}/stats", headers={"X-Request-ID": "req-42"})
    body = err(r, 500, "internal")
    assert body["request_id"] == "req-42" and r.headers["x-request-id"] == "req-42"
    assert "secret detail" not in r.text
    assert any("req-42" in rec.getMessage() for rec in caplog.records)


# ---- images --------------------------------------------------------------------------------
def test_images_list_pull_delete(api: Api) -> None:
    names = [i["name"] for i in api.c.get("/v1/images").json()["images"]]
    assert names == ["python", "busybox"]
    with api.c.stream(
        "POST", "/v1/images/pull", json={"ref": "registry.local/node:20", "name": "node"}
    ) as r:
        text = r.read().decode()
    kinds = [b.split("\n")[0] for b in text.strip().split("\n\n")]
    assert kinds == ["event: progress", "event: progress", "event: done"]
    assert '"name":"node"' in text.split("\n\n")[-2]
    with api.c.stream("POST", "/v1/images/pull", json={"ref": "registry.local/missing:1"}) as r:
        text = r.read().decode()
    assert text.startswith("event: error") and "manifest unknown" in text
    assert api.c.delete("/v1/images/node").json() == {"ok": True}
    assert "node" not in [i["name"] for i in api.c.get("/v1/images").json()["images"]]


# ---- lifecycle -----------------------------------------------------------------------------
def test_ttl_expiry(api: Api) -> None:
    sid = api.session(ttl_seconds=1)
    keep = api.session()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and api.c.get(f"/v1/sessions/{sid}").status_code == 200:
        time.sleep(0.1)
    err(api.c.get(f"/v1/sessions/{sid}"), 404, "session_not_found")
    assert api.runtime.live[sid].destroyed and sid not in api.images.leases
    assert api.c.get(f"/v1/sessions/{keep}").status_code == 200


def test_restart_reattaches_live_and_cleans_dead(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, SANDKASTEN_KEEP_SESSIONS_ON_SHUTDOWN="true")
    rt, images = FakeRuntime(tmp_path / "rt"), FakeImages()
    with running(cfg, rt, images) as api:
        alive, dead = api.session(), api.session()
        api.exec(alive, "cd /tmp")
    rt.kill(dead)  # its runner died while the daemon was down
    with running(cfg, rt, images) as api:
        ids = [s["id"] for s in api.c.get("/v1/sessions").json()]
        assert ids == [alive]
        r = api.exec(alive, "pwd")
        assert r["output"] == "/tmp\n"
        assert rt.cleaned == [dead] and dead not in images.leases
    # keep_sessions_on_shutdown=false (default): stopping destroys them
    with running(make_config(tmp_path), rt, images) as api:
        assert [s["id"] for s in api.c.get("/v1/sessions").json()] == [alive]
    assert rt.live[alive].destroyed and images.leases == {}


def test_concurrent_sessions(api: Api) -> None:
    import concurrent.futures as cf

    def one(i: int) -> None:
        with httpx.Client(base_url=api.url, headers=H, timeout=30) as c:
            sid = c.post("/v1/sessions", json={}).json()["id"]
            for j in range(5):
                r = c.post(f"/v1/sessions/{sid}/exec", json={"cmd": f"echo {i}-{j}"}).json()
                assert r["output"] == f"{i}-{j}\n"
            assert c.delete(f"/v1/sessions/{sid}").json() == {"ok": True}

    with cf.ThreadPoolExecutor(20) as pool:
        list(pool.map(one, range(20)))
    assert api.c.get("/v1/sessions").json() == []


def test_openapi_documents_every_route(api: Api) -> None:
    spec = api.c.get("/openapi.json").json()
    paths = spec["paths"]
    for p in [
        "/healthz",
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/stats",
        "/v1/sessions/{session_id}/exec",
        "/v1/sessions/{session_id}/exec/stream",
        "/v1/sessions/{session_id}/fs/write",
        "/v1/sessions/{session_id}/fs/read",
        "/v1/sessions/{session_id}/fs/upload",
        "/v1/sessions/{session_id}/fs/list",
        "/v1/sessions/{session_id}/fs/archive",
        "/v1/workspaces",
        "/v1/workspaces/{workspace_id}",
        "/v1/workspaces/{workspace_id}/fs/write",
        "/v1/workspaces/{workspace_id}/fs/upload",
        "/v1/workspaces/{workspace_id}/archive",
        "/v1/images",
        "/v1/images/pull",
        "/v1/images/{name}",
    ]:
        assert p in paths, p
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "401" in paths["/v1/sessions"]["post"]["responses"]
    assert httpx.get(api.url + "/docs").status_code == 200


def _wait(cond: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_pool_serves_prewarmed_and_follows_the_digest(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path, SANDKASTEN_POOL__ENABLED="true", SANDKASTEN_POOL__IMAGES='{"python": 2}'
    )
    rt, images = FakeRuntime(tmp_path / "rt"), FakeImages(["python", "busybox"])
    images.repull("python", "sha256:" + "1" * 64)
    with running(cfg, rt, images) as api:
        _wait(lambda: len(rt.created) == 2)
        pooled = set(rt.created)
        sid = api.session()
        assert sid in pooled and sid.startswith("sb-")
        assert api.exec(sid, "echo pooled")["output"] == "pooled\n"
        other = api.session(image="busybox")  # not pooled: created on demand
        assert other not in pooled and len(other) == 12
        limited = api.session(mem_limit_mb=64)  # other limits: never from the pool
        assert limited not in pooled
        _wait(lambda: len([i for i in rt.created if i.startswith("sb-")]) == 3)  # refilled
        stale = [i for i in rt.created if i.startswith("sb-") and i != sid]
        images.repull("python", "sha256:" + "2" * 64)
        first = api.session()  # new digest: the stale pool is not used
        assert rt.live[first].spec.layer_paths == [Path("/layers/sha256:" + "2" * 64)]
        _wait(lambda: all(rt.live[i].destroyed for i in stale))
        _wait(
            lambda: any(
                rt.live[i].spec.layer_paths[0].name.endswith("2" * 64) and not rt.live[i].destroyed
                for i in rt.created
                if i.startswith("sb-")
            )
        )
        again = api.session()
        assert rt.live[again].spec.layer_paths == [Path("/layers/sha256:" + "2" * 64)]
    # stopping drains the pool: nothing pooled survives
    assert all(sb.destroyed for sb in rt.live.values())


def test_restore_cleans_sandboxes_without_a_session(tmp_path: Path) -> None:
    rt, images = FakeRuntime(tmp_path / "rt"), FakeImages()
    orphan = tmp_path / "rt" / "sb-orphan"
    orphan.mkdir(parents=True)
    rt.list_sessions = lambda: sorted(p.name for p in (tmp_path / "rt").iterdir())  # type: ignore[attr-defined]
    with running(make_config(tmp_path), rt, images) as api:
        assert api.c.get("/v1/sessions").json() == []
    assert "sb-orphan" in rt.cleaned and not orphan.exists()


def test_deleting_an_image_drains_its_pool(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path, SANDKASTEN_POOL__ENABLED="true", SANDKASTEN_POOL__IMAGES='{"python": 2}'
    )
    rt, images = FakeRuntime(tmp_path / "rt"), FakeImages(["python"])
    with running(cfg, rt, images) as api:
        _wait(lambda: len(rt.created) == 2)
        _wait(lambda: all(not sb.destroyed for sb in rt.live.values()))
        assert set(images.leases) == set(rt.created)  # pooled sandboxes hold their layers
        assert api.c.delete("/v1/images/python").json() == {"ok": True}
        _wait(lambda: all(sb.destroyed for sb in rt.live.values()))
        _wait(lambda: images.leases == {})
        time.sleep(0.3)
        assert len(rt.created) == 2  # nothing refilled for a deleted image
        err(api.c.post("/v1/sessions", json={}), 404, "image_not_found")


def test_sessions_whose_sandbox_died_are_removed(api: Api) -> None:
    import subprocess

    sid, keep = api.session(), api.session()
    proc = subprocess.Popen(["true"])
    proc.wait()
    api.runtime.live[sid].pid = proc.pid  # this sandbox's PID 1 is gone
    _wait(lambda: api.c.get(f"/v1/sessions/{sid}").status_code == 404)
    assert api.runtime.live[sid].destroyed and sid not in api.images.leases
    assert api.c.get(f"/v1/sessions/{keep}").status_code == 200


def test_a_cancelled_create_leaves_no_sandbox(tmp_path: Path) -> None:
    import asyncio

    from sandkasten.session.manager import CreateRequest, SessionManager
    from sandkasten.store.db import StateDB

    cfg = make_config(tmp_path)
    rt, images = FakeRuntime(tmp_path / "rt", create_delay=0.3), FakeImages()
    db = StateDB(cfg.database_path)
    m = SessionManager(cfg, rt, db, images)

    async def scenario() -> None:
        task = asyncio.ensure_future(m.create(CreateRequest()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.6)

    asyncio.run(scenario())
    db.close()
    assert len(rt.created) == 1 and rt.live[rt.created[0]].destroyed
    assert m.list_sessions() == [] and images.leases == {}


@pytest.mark.parametrize(("listen", "key", "refused"), [
    ("0.0.0.0:8080", "", True),
    ("[::]:8080", "", True),
    ("192.0.2.1:8080", "", True),
    ("0.0.0.0:8080", "k", False),
    ("127.0.0.1:8080", "", False),
    ("localhost:8080", "", False),
])
def test_create_app_refuses_open_listen_without_key(tmp_path: Path, listen: str, key: str,
                                                     refused: bool) -> None:
    """The app itself (not only the CLI) refuses to serve a network address keyless."""
    config = make_config(tmp_path, SANDKASTEN_LISTEN=listen, SANDKASTEN_API_KEY=key)
    runtime = FakeRuntime(tmp_path / "sandboxes")
    if not refused:
        config.check_serving()  # what create_app runs first
        return
    with pytest.raises(ConfigError) as ei:
        create_app(config, runtime, images=FakeImages())
    assert "listen" in ei.value.message and "api_key" in ei.value.message
    assert listen in ei.value.message
    assert not config.database_path.exists()  # refused before anything was created
