"""Root filesystems for tests, built without Docker.

- ``busybox_rootfs(dest)``: a tiny image: busybox-static and its applet links.
- ``debian_python_tar()``: a Debian bookworm rootfs with python3, made by mmdebstrap once
  and cached (``SANDKASTEN_TEST_CACHE``, default /var/cache/sandkasten-tests) between runs.
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
