"""``imgbuilder bootstrap``: an image from Debian or Ubuntu packages, with no registry.

mmdebstrap writes the root filesystem as a tar to a pipe; the pipe feeds the normal
layer path (:func:`imgbuilder.layers.add_layer`), so the result is an ordinary one-layer
image, verified, atomic and keyed by its diff_id, with a config like an official image's:
``PATH`` set, ``/bin/bash`` as command, ``/`` as working directory.

Why mmdebstrap: it runs without a container engine, builds reproducible minimal systems
(``--variant=minbase``) for any Debian or Ubuntu suite, and can stream a tarball to stdout.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

from imgbuilder.errors import ImageError
from imgbuilder.images import ImageRecord
from imgbuilder.layers import add_layer
from imgbuilder.store import Store
from imgbuilder.tarball import record_for_rootfs


def mmdebstrap_command(suite: str, packages: list[str], mirror: str | None,
                       variant: str = "minbase") -> list[str]:
    """The mmdebstrap argument list (tar to stdout, no /dev nodes: the runtime mounts /dev)."""
    cmd = ["mmdebstrap", "--quiet", f"--variant={variant}", "--format=tar",
           "--skip=output/dev"]
    if packages:
        cmd.append("--include=" + ",".join(packages))
    cmd += [suite, "-"]
    if mirror:
        cmd.append(mirror)
    return cmd


def bootstrap_image(store: Store, name: str, *, suite: str = "bookworm",
                    packages: list[str] | None = None, mirror: str | None = None,
                    variant: str = "minbase") -> ImageRecord:
    """Build ``name`` with mmdebstrap and add it as a one-layer image (record not written)."""
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is not installed", hint="apt-get install mmdebstrap")
    cmd = mmdebstrap_command(suite, packages or [], mirror, variant)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        assert proc.stdout is not None
        try:
            layer = add_layer(store, proc.stdout)
        except ImageError:
            if proc.wait() != 0:
                raise _failed(suite, proc.returncode, stderr, reader) from None
            raise
        if proc.wait() != 0:
            raise _failed(suite, proc.returncode, stderr, reader)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        reader.join(timeout=5)
        if proc.stderr:
            proc.stderr.close()
    layer.digest = None
    rec = record_for_rootfs(store, layer, reference=f"debian:{suite}" if not mirror else
                            f"{mirror} {suite}", source="bootstrap", cmd=["/bin/bash"])
    rec.name = name
    return rec


def _failed(suite: str, rc: int, stderr: list[bytes], reader: threading.Thread) -> ImageError:
    reader.join(timeout=5)
    text = b"".join(stderr).decode(errors="replace").strip().splitlines()
    last = text[-1] if text else "no output"
    return ImageError(f"mmdebstrap failed for suite {suite} (exit {rc}): {last}",
                      hint="check the suite name, --mirror and network access to the mirror")
