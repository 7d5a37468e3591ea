"""The real daemon (``sandkasten --config``, LinuxRuntime, uvicorn) driven over HTTP.

Every test starts its own daemon with its own data dir (the test images hard-linked in)
and checks afterwards that nothing is left: no mount, no session directory.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon import API_KEY, DaemonProcess, daemon, daemon_factory, image_store

__all__ = ["daemon", "daemon_factory", "image_store"]  # fixtures used below

pytestmark = [pytest.mark.integration, pytest.mark.privileged]


def sh(script: str, **env: str) -> str:
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                       text=True, env={**os.environ, **env}, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def session_dirs(d: DaemonProcess) -> list[str]:
    return sorted(p.name for p in (d.data_dir / "sessions").iterdir())


def mounts_under(path: Path) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(path))]


# ---- the seed guide, verbatim ----------------------------------------------------------------
def test_seed_step8_curl_flow(daemon: DaemonProcess) -> None:
    base = daemon.base_url
    assert sh(f"curl -s {base}/healthz") == '{"status":"ok"}'
    created = json.loads(sh(f"""curl -s -X POST {base}/v1/sessions \\
  -H "Authorization: Bearer sk-sandbox-test" \\
  -H "Content-Type: application/json" \\
  -d '{{"image":"python"}}'"""))
    assert list(created) == ["id", "image", "status", "cwd", "workspace_id", "created_at",
                             "expires_at"]
    assert created["image"] == "python" and created["status"] == "running"
    env = {"SESSION_ID": created["id"], "BASE": base}
    out = json.loads(sh("""curl -X POST $BASE/v1/sessions/$SESSION_ID/exec \\
  -H "Authorization: Bearer sk-sandbox-test" \\
  -H "Content-Type: application/json" \\
  -d '{"cmd":"echo hello world"}' -s""", **env))
    assert list(out) == ["exit_code", "cwd", "output", "truncated", "duration_ms"]
    assert (out["exit_code"], out["cwd"], out["output"], out["truncated"]) == (
        0, "/workspace", "hello world\n", False)
    out = json.loads(sh("""curl -s -X POST $BASE/v1/sessions/$SESSION_ID/exec \\
  -H "Authorization: Bearer sk-sandbox-test" \\
  -H "Content-Type: application/json" \\
  -d '{"cmd":"python3 -c \\"print(2 + 2)\\""}'""", **env))
    assert (out["exit_code"], out["cwd"], out["output"]) == (0, "/workspace", "4\n")
    sh("""curl -s -X POST $BASE/v1/sessions/$SESSION_ID/fs/write \\
  -H "Authorization: Bearer sk-sandbox-test" \\
  -H "Content-Type: application/json" \\
  -d '{"path":"/workspace/hello.py","text":"print(\\"Hello from file!\\")"}'""", **env)
    read = json.loads(sh(
        'curl "$BASE/v1/sessions/$SESSION_ID/fs/read?path=/workspace/hello.py" \\\n'
        '  -H "Authorization: Bearer sk-sandbox-test" -s', **env))
    assert base64.b64decode(read["content_base64"]) == b'print("Hello from file!")'
    out = json.loads(sh("""curl -s -X POST $BASE/v1/sessions/$SESSION_ID/exec \\
  -H "Authorization: Bearer sk-sandbox-test" \\
  -H "Content-Type: application/json" \\
  -d '{"cmd":"python3 /workspace/hello.py"}'""", **env))
    assert out["output"] == "Hello from file!\n"
    assert sh("""curl -s -X DELETE $BASE/v1/sessions/$SESSION_ID \\
  -H "Authorization: Bearer sk-sandbox-test" """, **env) == '{"ok":true}'
    assert session_dirs(daemon) == []


def test_seed_api_quick_reference_without_content_type(daemon: DaemonProcess) -> None:
    script = """
API_KEY="sk-sandbox-test"
SESSION=$(curl -s -X POST $BASE/v1/sessions \\
  -H "Authorization: Bearer $API_KEY" \\
  -d '{"image":"python"}' | jq -r .id)
curl -s -X POST $BASE/v1/sessions/$SESSION/exec \\
  -H "Authorization: Bearer $API_KEY" \\
  -d '{"cmd":"echo hello"}' | jq -c .
curl -s -X POST $BASE/v1/sessions/$SESSION/fs/write \\
  -H "Authorization: Bearer $API_KEY" \\
  -d '{"path":"/workspace/test.py","text":"print(42)"}' | jq -c .
curl -s "$BASE/v1/sessions/$SESSION/fs/read?path=/workspace/test.py" \\
  -H "Authorization: Bearer $API_KEY" | jq -r .content_base64 | base64 -d
echo
curl -s -X DELETE $BASE/v1/sessions/$SESSION \\
  -H "Authorization: Bearer $API_KEY"
"""
    lines = sh(script, BASE=daemon.base_url).splitlines()
    exec_out = json.loads(lines[0])
    assert exec_out["output"] == "hello\n" and exec_out["exit_code"] == 0
    assert json.loads(lines[1]) == {"ok": True, "path": "/workspace/test.py", "bytes": 9}
    assert lines[2:] == ["print(42)", '{"ok":true}']


# ---- behaviour -----------------------------------------------------------------------------
def test_shell_state_stream_split_and_stats(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        sid = c.post("/v1/sessions", json={"image": "busybox"}).json()["id"]

        def run(cmd: str, **kw: Any) -> dict[str, Any]:
            r = c.post(f"/v1/sessions/{sid}/exec", json={"cmd": cmd, **kw})
            assert r.status_code == 200, r.text
            return dict(r.json())

        run("cd /tmp && export NAME=sandkasten")
        out = run("echo $NAME; pwd")
        assert out["output"] == "sandkasten\n/tmp\n" and out["cwd"] == "/tmp"
        assert c.get(f"/v1/sessions/{sid}").json()["cwd"] == "/tmp"
        split = run("echo out; echo err >&2; exit 3", split_output=True)
        assert (split["exit_code"], split["stdout"], split["stderr"]) == (3, "out\n", "err\n")
        assert set(split) == {"exit_code", "stdout", "stderr", "cwd", "duration_ms"}
        slow = run("sleep 5", timeout_ms=300)
        assert slow["timed_out"] is True and slow["duration_ms"] < 3000
        t0 = time.monotonic()
        arrivals: list[tuple[float, str]] = []
        with c.stream("POST", f"/v1/sessions/{sid}/exec/stream",
                      json={"cmd": "for i in 1 2 3; do echo $i; sleep 0.3; done"}) as r:
            event = ""
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    arrivals.append((time.monotonic() - t0, event))
                    if event == "done":
                        assert json.loads(line[6:])["exit_code"] == 0
        chunks = [t for t, e in arrivals if e == "chunk"]
        assert arrivals[-1][1] == "done" and len(chunks) >= 2
        assert chunks[0] < arrivals[-1][0] - 0.4  # output arrived while the command ran
        stats = c.get(f"/v1/sessions/{sid}/stats").json()
        assert stats["memory_limit"] == 512 << 20 and stats["pids"] >= 1
        assert stats["memory_bytes"] > 0 and stats["cpu_usage_usec"] > 0


def test_uploads_listing_and_archives(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        sid = c.post("/v1/sessions", json={"image": "busybox"}).json()["id"]
        big = os.urandom(3 << 20)
        r = c.post(f"/v1/sessions/{sid}/fs/upload", data={"path": "/workspace/in"},
                   files=[("file", ("big.bin", big)), ("files", ("a.txt", b"A\n"))])
        assert r.status_code == 200, r.text
        assert [f["path"] for f in r.json()["files"]] == ["/workspace/in/big.bin",
                                                         "/workspace/in/a.txt"]
        out = c.post(f"/v1/sessions/{sid}/exec", json={"cmd": "wc -c < in/big.bin"}).json()
        assert out["output"].strip() == str(len(big))
        names = {e["name"] for e in c.get(f"/v1/sessions/{sid}/fs/list",
                                          params={"path": "/workspace/in"}).json()["entries"]}
        assert names == {"big.bin", "a.txt"}
        c.post(f"/v1/sessions/{sid}/exec", json={"cmd": "ln -s /etc/passwd in/link"})
        r = c.get(f"/v1/sessions/{sid}/fs/archive", params={"path": "/workspace/in"})
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
            member = tf.extractfile("big.bin")
            assert member is not None and member.read() == big
            assert tf.getmember("link").issym()  # archived as a link, never followed
        r = c.get(f"/v1/sessions/{sid}/fs/archive", params={"path": "/etc/passwd"})
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
            f = tf.extractfile("passwd")
            assert f is not None and b"root:x:0:0" in f.read()


def test_workspace_persists_across_sessions(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        a = c.post("/v1/sessions", json={"image": "busybox", "workspace_id": "proj"}).json()
        assert a["workspace_id"] == "proj"
        c.post(f"/v1/sessions/{a['id']}/exec", json={"cmd": "echo kept > notes.txt"})
        assert c.delete(f"/v1/sessions/{a['id']}").json() == {"ok": True}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            ti = tarfile.TarInfo("imported/data.txt")
            ti.size = 3
            tf.addfile(ti, io.BytesIO(b"imp"))
        r = c.put("/v1/workspaces/proj/archive", content=buf.getvalue())
        assert r.json()["files"] == 1
        c.post("/v1/workspaces/proj/fs/upload", files={"file": ("up.txt", b"up")})
        b = c.post("/v1/sessions", json={"image": "busybox", "workspace_id": "proj"}).json()
        out = c.post(f"/v1/sessions/{b['id']}/exec",
                     json={"cmd": "cat notes.txt imported/data.txt up.txt; echo; touch new"}).json()
        assert out["output"] == "kept\nimpup\n" and out["exit_code"] == 0
        r = c.get("/v1/workspaces/proj/archive")
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
            assert {"notes.txt", "imported/data.txt", "up.txt", "new"} <= set(tf.getnames())
        assert c.delete("/v1/workspaces/proj").json()["code"] == "workspace_in_use"
        c.delete(f"/v1/sessions/{b['id']}")
        assert c.delete("/v1/workspaces/proj").json() == {"ok": True}
        assert not (daemon.data_dir / "workspaces/proj").exists()


def test_errors_over_http(daemon: DaemonProcess) -> None:
    with httpx.Client(base_url=daemon.base_url, timeout=30) as anon:
        r = anon.get("/v1/sessions")
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
        r = anon.get("/v1/sessions", headers={"Authorization": "Bearer nope"})
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    with daemon.client() as c:
        r = c.post("/v1/sessions", json={"image": "ruby"})
        assert (r.status_code, r.json()["code"]) == (404, "image_not_found")
        assert "sandkasten image pull --name ruby" in r.json()["hint"]
        sid = c.post("/v1/sessions", json={"image": "busybox"}).json()["id"]
        r = c.get(f"/v1/sessions/{sid}/fs/read", params={"path": "/no/such"})
        assert (r.status_code, r.json()["code"]) == (404, "file_not_found")
        r = c.post(f"/v1/sessions/{sid}/exec", json={"cmd": "x" * (1 << 20 | 1)})
        assert (r.status_code, r.json()["code"]) == (400, "cmd_too_large")
        r = c.post(f"/v1/sessions/{sid}/exec", content=b"{not json")
        assert (r.status_code, r.json()["code"]) == (400, "invalid_request")
        r = c.post("/v1/sessions/0123456789ab/exec", json={"cmd": "true"})
        assert (r.status_code, r.json()["code"]) == (404, "session_not_found")
        r = c.delete("/v1/images/busybox")
        assert (r.status_code, r.json()["code"]) == (409, "image_in_use")


def test_ttl_expiry_removes_everything(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        sid = c.post("/v1/sessions", json={"image": "busybox", "ttl_seconds": 1}).json()["id"]
        assert session_dirs(daemon) == [sid]
        deadline = time.monotonic() + 10
        while c.get(f"/v1/sessions/{sid}").status_code == 200 or session_dirs(daemon):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert not list((daemon.data_dir / "leases").glob(f"{sid}*"))


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a dead runner waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _runner_pid(d: DaemonProcess, sid: str) -> int:
    return int(json.loads((d.data_dir / "sessions" / sid / "state.json").read_text())["pid"])


def test_restart_after_sigkill_reattaches_live_sessions(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        live = c.post("/v1/sessions", json={"image": "busybox"}).json()["id"]
        dead = c.post("/v1/sessions", json={"image": "busybox"}).json()["id"]
        c.post(f"/v1/sessions/{live}/exec", json={"cmd": "cd /tmp && echo state > f"})
    daemon.kill()
    os.kill(_runner_pid(daemon, dead), signal.SIGKILL)  # this one dies while we are down
    daemon.start()
    with daemon.client() as c:
        assert [s["id"] for s in c.get("/v1/sessions").json()] == [live]
        out = c.post(f"/v1/sessions/{live}/exec", json={"cmd": "pwd; cat f"}).json()
        assert out["output"] == "/tmp\nstate\n"
    assert session_dirs(daemon) == [live]
    assert daemon.stop() == 0
    assert session_dirs(daemon) == [] and mounts_under(daemon.data_dir) == []
    assert "INFO stopped" in daemon.log()


def test_a_sandbox_killed_from_outside_is_cleaned_up(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        sid = c.post("/v1/sessions", json={"image": "busybox"}).json()["id"]
        os.kill(_runner_pid(daemon, sid), signal.SIGKILL)  # e.g. the OOM killer
        deadline = time.monotonic() + 10
        while c.get(f"/v1/sessions/{sid}").status_code == 200 or session_dirs(daemon):
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.2)
    assert f"session destroyed id={sid} reason=sandbox exited" in daemon.log()


def test_keep_sessions_on_shutdown(daemon_factory: Any) -> None:
    d: DaemonProcess = daemon_factory(keep_sessions_on_shutdown=True)
    with d.client() as c:
        sid = c.post("/v1/sessions", json={"image": "busybox"}).json()["id"]
    assert d.stop() == 0
    d.start()
    with d.client() as c:
        assert c.post(f"/v1/sessions/{sid}/exec", json={"cmd": "echo back"}).json()[
            "output"] == "back\n"
        c.delete(f"/v1/sessions/{sid}")


def test_pool_hands_out_prewarmed_sandboxes(daemon_factory: Any) -> None:
    d: DaemonProcess = daemon_factory(pool={"enabled": True, "images": {"busybox": 2}})
    deadline = time.monotonic() + 20
    ready = d.data_dir / "sessions"
    while len([n for n in session_dirs(d)
               if n.startswith("sb-") and (ready / n / "state.json").exists()]) < 2:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.1)
    time.sleep(0.3)
    with d.client() as c:
        t0 = time.monotonic()
        s = c.post("/v1/sessions", json={"image": "busybox"}).json()
        took = time.monotonic() - t0
        assert s["id"].startswith("sb-") and took < 1.0
        out = c.post(f"/v1/sessions/{s['id']}/exec", json={"cmd": "echo pooled"}).json()
        assert out["output"] == "pooled\n"
    # SIGKILL with a warm pool: the next start removes the orphaned pooled sandboxes
    pooled = [n for n in session_dirs(d) if n.startswith("sb-") and n != s["id"]]
    pids = [_runner_pid(d, n) for n in pooled if (ready / n / "state.json").exists()]
    d.kill()
    d.start()
    with d.client() as c:
        assert [x["id"] for x in c.get("/v1/sessions").json()] == [s["id"]]
    assert not set(pooled) & set(session_dirs(d))
    assert not any(alive(p) for p in pids)
    assert d.stop() == 0
    assert session_dirs(d) == []
    assert not list((d.data_dir / "leases").glob("*.json"))  # no lease outlives its sandbox


def test_fifty_concurrent_sessions(daemon: DaemonProcess) -> None:
    def client_work(i: int) -> int:
        with daemon.client(timeout=120) as c:
            r = c.post("/v1/sessions", json={"image": "busybox"})
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            for j in range(10):
                out = c.post(f"/v1/sessions/{sid}/exec", json={"cmd": f"echo {i}-{j}"}).json()
                assert out == {"exit_code": 0, "cwd": "/workspace", "output": f"{i}-{j}\n",
                               "truncated": False, "duration_ms": out["duration_ms"]}
            assert c.delete(f"/v1/sessions/{sid}").json() == {"ok": True}
            return i

    with cf.ThreadPoolExecutor(50) as pool:
        assert sorted(pool.map(client_work, range(50))) == list(range(50))
    assert session_dirs(daemon) == []


def test_stop_destroys_sessions_and_leaks_nothing(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        ids = [c.post("/v1/sessions", json={"image": "busybox"}).json()["id"] for _ in range(3)]
    pids = [_runner_pid(daemon, s) for s in ids]
    assert daemon.stop() == 0
    assert session_dirs(daemon) == [] and mounts_under(daemon.data_dir) == []
    assert not any(alive(p) for p in pids)
    assert not (daemon.data_dir / "run" / "daemon.json").exists()
    assert API_KEY not in daemon.log()
