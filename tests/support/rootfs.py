"""Root filesystems for tests, built without Docker.

- ``busybox_rootfs(dest)``: a tiny image: busybox-static and its applet links.
- ``debian_python_tar()``: a Debian bookworm rootfs with python3, made by mmdebstrap once
  and cached (``SANDKASTEN_TEST_CACHE``, default /var/cache/sandkasten-tests) between runs;
  ``debian_python_rootfs()``: the same, extracted once into the cache (read-only use).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = "/bin/busybox"
CACHE = Path(os.environ.get("SANDKASTEN_TEST_CACHE", "/var/cache/sandkasten-tests"))
DEBIAN_SUITE = "bookworm"


def busybox_rootfs(dest: Path) -> Path:
    """Fill ``dest`` with a busybox root filesystem (bin/sh and every applet) and return it."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "home", "proc",
              "dev", "sys", "workspace"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin/busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = dest / applet
        if applet == "bin/busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\n")
    os.chmod(dest / "tmp", 0o1777)
    return dest


def debian_python_tar() -> Path:
    """A cached ``mmdebstrap`` tarball of Debian with python3 (about 122 MB unpacked)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"debian-{DEBIAN_SUITE}-python3.tar"
    if out.exists():
        return out
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes build it once
        if out.exists():
            return out
        tmp = out.with_suffix(".tmp.tar")
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3",
             "--skip=output/dev", DEBIAN_SUITE, str(tmp)],
            check=True,
        )
        os.replace(tmp, out)
    return out


def debian_python_rootfs() -> Path:
    """``debian_python_tar()`` extracted once into the cache; callers never write into it
    (it is an overlay lower layer or a read-only bind). Extracted and synced once: no
    caller pays for (or makes the filesystem churn with) a fresh 200 MB copy."""
    dest = CACHE / f"debian-{DEBIAN_SUITE}-python3.rootfs"
    done = CACHE / f"debian-{DEBIAN_SUITE}-python3.rootfs.complete"
    if done.exists():
        for d in ("dev", "proc", "sys", "tmp", "workspace"):  # mount points (older caches)
            (dest / d).mkdir(exist_ok=True)
        return dest
    tar = debian_python_tar()
    with open(CACHE / ".extract.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            subprocess.run(["tar", "-xpf", str(tar), "-C", str(dest), "--numeric-owner"],
                           check=True)
            for d in ("dev", "proc", "sys", "tmp", "workspace"):
                (dest / d).mkdir(exist_ok=True)
            os.sync()
            done.touch()
    return dest
