"""``pull_image`` and the pull command against a real registry, with images built here."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from imgbuilder.pull import PullEvent, pull_image
from imgbuilder.store import Store
from registry.transport import RegistryConfig
from tests.support.ocibuild import (
    directory,
    fifo,
    file,
    hardlink,
    opaque,
    push_image,
    push_index,
    symlink,
    whiteout,
)
from tests.support.pulltools import run_pull
from tests.support.registry import free_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("require_root")]

LONG = "deep/" + "d" * 120 + "/" + "f" * 200

BASE = [
    directory("etc"), file("etc/os-release", b"ID=test\n"),
    file("etc/shadow", b"root:*:1::::::\n", mode=0o640, uid=0, gid=42),
    directory("usr/bin"), file("usr/bin/su", b"\x7fELF su", mode=0o4755),
    file("usr/bin/wall", b"\x7fELF wall", mode=0o2755, gid=5),
    directory("tmp", mode=0o1777),
    directory("home/user", uid=1000, gid=1000), file("home/user/.profile", b"x", uid=1000,
                                                     gid=1000),
    file("usr/bin/python3", b"\x7fELF python", mode=0o755),
    hardlink("usr/bin/python3.11", "usr/bin/python3"),
    symlink("usr/bin/python", "python3"), symlink("etc/abs", "/etc/os-release"),
    fifo("run-fifo"),
    file("cap-file", b"ping", xattrs={"user.origin": "layer1", "user.sk.note": "two words"}),
    file(LONG, b"long name"),
    directory("var/cache"), file("var/cache/a", b"a"), file("var/cache/b", b"b"),
    directory("opt/app"), file("opt/app/old.py", b"old"),
]
TOP = [
    whiteout("var/cache/a"), whiteout("etc/shadow"),
    opaque("opt/app"), file("opt/app/new.py", b"new"),
    file("etc/os-release", b"ID=test\nVERSION=2\n"),
]


def pull(store: Store, ref: str, **kw: object) -> tuple:
    events: list[PullEvent] = []
    kw.setdefault("registry_settings", RegistryConfig(environ={}, docker_config=Path("/none")))
    rec = pull_image(store, ref, progress=events.append, **kw)  # type: ignore[arg-type]
    return rec, events


@pytest.fixture(scope="module")
def rich_image(registry):
    return push_image(registry, "pull/rich", "1", [BASE, TOP])


def test_pull_by_tag_stores_layers_blobs_and_record(registry, rich_image, tmp_path):
    store = Store(tmp_path / "data")
    rec, events = pull(store, f"{registry.host}/pull/rich:1", name="rich")
    assert rec.name == "rich" and rec.source == "registry"
    assert rec.manifest_digest == rich_image.manifest_digest
    assert rec.config_digest == rich_image.config_digest
    assert rec.platform == "linux/amd64"
    assert rec.config["WorkingDir"] == "/work" and rec.config["User"] == "1000:1000"
    assert rec.config["Env"][1] == "LANG=C.UTF-8" and rec.config["Labels"]
    assert [x.diff_id for x in rec.layers] == rich_image.diff_ids
    assert store.get_image("rich").manifest_digest == rich_image.manifest_digest
    for digest in (rich_image.manifest_digest, rich_image.config_digest,
                   *rich_image.layer_digests):
        assert store.has_blob(digest)
    assert not list((tmp_path / "data/blobs/partial").iterdir())
    assert not list((tmp_path / "data/layers").glob(".tmp-*"))
    assert events[0].kind == "resolved" and events[-1].kind == "done"

    base, top = (store.layer_path(d) for d in rich_image.diff_ids)
    assert stat.S_IMODE(os.lstat(base / "usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(base / "usr/bin/wall").st_mode) == 0o2755
    assert stat.S_IMODE(os.lstat(base / "tmp").st_mode) == 0o1777
    st = os.lstat(base / "home/user/.profile")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert os.lstat(base / "usr/bin/python3").st_ino == os.lstat(base / "usr/bin/python3.11").st_ino
    assert os.readlink(base / "etc/abs") == "/etc/os-release"
    assert stat.S_ISFIFO(os.lstat(base / "run-fifo").st_mode)
    assert os.getxattr(base / "cap-file", "user.origin") == b"layer1"
    assert (base / LONG).read_bytes() == b"long name"
    wh = os.lstat(top / "var/cache/a")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(top / "opt/app", "trusted.overlay.opaque") == b"y"
    assert not (top / "opt/app/.wh..wh..opq").exists()


@pytest.mark.parametrize(("fmt", "compression"), [
    ("oci", "zstd"), ("oci", "none"), ("docker", "gzip"), ("docker", "none"),
    ("oci", ["gzip", "zstd"]),
])
def test_pull_formats(registry, tmp_path, fmt, compression):
    tag = f"{fmt}-{'-'.join(compression) if isinstance(compression, list) else compression}"
    im = push_image(registry, "pull/formats", tag, [BASE, TOP], fmt=fmt, compression=compression)
    store = Store(tmp_path / "data")
    rec, _ = pull(store, f"{registry.host}/pull/formats:{tag}")
    assert rec.name == "formats"
    assert [x.media_type for x in rec.layers] == [
        json.loads(im.manifest)["layers"][i]["mediaType"] for i in range(2)]
    top = store.layer_path(im.diff_ids[1])
    assert (top / "opt/app/new.py").read_bytes() == b"new"
    assert stat.S_ISCHR(os.lstat(top / "etc/shadow").st_mode)


def test_pull_by_digest_and_through_index(registry, tmp_path):
    amd = push_image(registry, "pull/multi", None, [[file("arch", b"amd64")]])
    arm = push_image(registry, "pull/multi", None, [[file("arch", b"arm64")]], arch="arm64")
    armv7 = push_image(registry, "pull/multi", None, [[file("arch", b"armv7")]], arch="arm",
                       variant="v7", fmt="docker")
    push_index(registry, "pull/multi", "oci", [amd, arm])
    push_index(registry, "pull/multi", "list", [amd, armv7], fmt="docker")
    store = Store(tmp_path / "data")

    rec, _ = pull(store, f"{registry.host}/pull/multi:oci", platform="linux/arm64", name="arm")
    assert rec.platform == "linux/arm64" and rec.manifest_digest == arm.manifest_digest
    assert (store.layer_paths(rec)[0] / "arch").read_bytes() == b"arm64"
    rec, _ = pull(store, f"{registry.host}/pull/multi:list", platform="linux/arm/v7")
    assert rec.platform == "linux/arm/v7" and rec.manifest_digest == armv7.manifest_digest
    rec, _ = pull(store, f"{registry.host}/pull/multi@{amd.manifest_digest}", name="pinned")
    assert rec.manifest_digest == amd.manifest_digest
    assert rec.reference.endswith(f"@{amd.manifest_digest}")
    # index and manifests are kept as blobs
    assert store.has_blob(arm.manifest_digest) and store.has_blob(armv7.manifest_digest)


def test_pull_again_downloads_only_what_changed(registry, tmp_path):
    base = [directory("lib"), file("lib/big", os.urandom(200_000))]
    v1 = push_image(registry, "pull/update", "latest", [base, [file("app", b"v1")]])
    store = Store(tmp_path / "data")
    rec, events = pull(store, f"{registry.host}/pull/update")
    assert rec.manifest_digest == v1.manifest_digest
    assert sum(e.kind == "layer_started" for e in events) == 2

    rec, events = pull(store, f"{registry.host}/pull/update")
    assert {e.kind for e in events} >= {"layer_skipped"}
    assert not any(e.kind == "layer_started" for e in events)

    v2 = push_image(registry, "pull/update", "latest", [base, [file("app", b"v2")]])
    rec, events = pull(store, f"{registry.host}/pull/update")
    assert store.get_image("update").manifest_digest == v2.manifest_digest
    started = [e.digest for e in events if e.kind == "layer_started"]
    skipped = [e.digest for e in events if e.kind == "layer_skipped"]
    assert started == [v2.layer_digests[1]] and skipped == [v1.layer_digests[0]]
    assert (store.layer_paths(rec)[1] / "app").read_bytes() == b"v2"


# -- the command: output and one-line failures ------------------------------------------


def assert_one_error(proc, *needles):
    """Exit 1; exactly one ``error:`` line, last but for an optional ``hint:``; no traceback."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert all(line.startswith("hint: ") for line in lines[errors[0] + 1 :]), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[errors[0]], proc.stderr


def test_cli_pull_plain_progress_and_quiet(registry, rich_image, tmp_path):
    data = tmp_path / "data"
    proc = run_pull(["--data-dir", str(data), f"{registry.host}/pull/rich:1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"pulled rich: {registry.host}/pull/rich:1 {rich_image.manifest_digest}" in proc.stdout
    assert "downloading" in proc.stderr and "done" in proc.stderr and "/s)" in proc.stderr
    proc = run_pull(["-q", "--data-dir", str(data), "--name", "again",
                     f"{registry.host}/pull/rich:1"], tmp_path)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert Store(data).get_image("again").manifest_digest == rich_image.manifest_digest


def test_cli_failures_are_one_line(registry, rich_image, tmp_path):
    d = ["--data-dir", str(tmp_path / "data")]
    assert_one_error(run_pull([*d, f"{registry.host}/pull/rich:nope"], tmp_path),
                     "pull/rich:nope not found on registry")
    assert_one_error(run_pull([*d, f"{registry.host}/pull/never:1"], tmp_path), "not found")
    assert_one_error(run_pull([*d, "--platform", "linux/riscv64", f"{registry.host}/pull/rich:1"],
                              tmp_path), "no image for platform linux/riscv64",
                     "available: linux/amd64")
    port = free_port()
    assert_one_error(run_pull([*d, f"127.0.0.1:{port}/a/b:1"], tmp_path),
                     f"registry 127.0.0.1:{port} is unreachable")
    assert_one_error(run_pull([*d, "Bad/Name"], tmp_path), "invalid image reference")
    assert not Store(tmp_path / "data").list_images()


def test_cli_auth_registry(auth_registry, tmp_path):
    push_image(auth_registry, "private/tool", "1", [[file("bin/tool", b"t", mode=0o755)]])
    ref = f"{auth_registry.host}/private/tool:1"
    d = ["--data-dir", str(tmp_path / "data")]
    assert_one_error(run_pull([*d, ref], tmp_path),
                     f"registry {auth_registry.host} requires authentication")
    proc = run_pull([*d, "--username", "tester", "--password-stdin", ref], tmp_path,
                    stdin="wrong\n")
    assert_one_error(proc, f"registry {auth_registry.host} refused the credentials")

    proc = run_pull([*d, "-q", "--username", "tester", "--password-stdin", ref], tmp_path,
                    stdin="s3cret\n")
    assert proc.returncode == 0, proc.stderr

    cfgdir = tmp_path / "docker"
    cfgdir.mkdir()
    (cfgdir / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {
        "auth": base64.b64encode(b"tester:s3cret").decode()}}}))
    proc = run_pull([*d, "-q", "--name", "viaconfig", ref], tmp_path, DOCKER_CONFIG=str(cfgdir))
    assert proc.returncode == 0, proc.stderr
    proc = run_pull([*d, "-q", "--name", "viaenv", ref], tmp_path,
                    SANDKASTEN_REGISTRY_AUTH=f"{auth_registry.host}=tester:s3cret")
    assert proc.returncode == 0, proc.stderr
    names = {r.name for r in Store(tmp_path / "data").list_images()}
    assert names == {"tool", "viaconfig", "viaenv"}


def test_flatten_on_request_and_for_too_many_layers(registry, rich_image, tmp_path):
    store = Store(tmp_path / "data")
    rec, _ = pull(store, f"{registry.host}/pull/rich:1", flatten=True, name="flat")
    assert rec.flattened and len(rec.layers) == 1
    flat = store.layer_paths(rec)[0]
    assert (flat / "opt/app/new.py").exists() and not (flat / "opt/app/old.py").exists()
    assert not (flat / "var/cache/a").exists() and (flat / "var/cache/b").exists()
    assert stat.S_IMODE(os.lstat(flat / "usr/bin/su").st_mode) == 0o4755
    assert rec.manifest_digest == rich_image.manifest_digest

    many = [[file(f"f{i}", str(i).encode())] for i in range(101)]
    push_image(registry, "pull/many", "1", many)
    rec, _ = pull(store, f"{registry.host}/pull/many:1")
    assert rec.flattened and len(rec.layers) == 1
    assert sorted(p.name for p in store.layer_paths(rec)[0].iterdir()) == sorted(
        f"f{i}" for i in range(101))
