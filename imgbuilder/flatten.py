"""The merged view of an image's layers: export as one tar, or flatten into one layer.

``merged_entries(layers)`` walks the layers the way overlayfs merges them, top layer
first: an entry hides the same path below it; a whiteout (0:0 character device) hides it
and shows nothing; a non-directory hides a whole directory below; an opaque directory
(``trusted.overlay.opaque=y``) shows only its own content. Directories come before their
content, names in sorted order, so the output is deterministic.

``export_tar`` writes that view as a plain rootfs tar (PAX, numeric owners, xattrs, hardlink
groups kept, whiteouts applied: no whiteout devices and no ``trusted.overlay.*`` xattrs),
as ``crane export`` does. ``flatten_image`` pipes that tar straight into the normal layer
extraction, so a flattened layer is an ordinary layer with a real diff_id.
"""

from __future__ import annotations

import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from imgbuilder.errors import LayerError
from imgbuilder.images import ImageRecord, LayerRecord
from imgbuilder.layers import add_layer
from imgbuilder.store import Store
from imgbuilder.whiteout import OPAQUE_XATTR

# The overlay mount options must fit in one page (4096 bytes), lowerdirs joined by ':'.
MOUNT_DATA_LIMIT = 4096


def max_layers(store: Store) -> int:
    """How many layers one overlay mount of this store accepts (mount data fits a page).

    Room is left for a session's ``upperdir=``, ``workdir=`` and options; the kernel's own
    stacking limit is 500.
    """
    per_layer = len(str(store.layers_dir)) + 1 + 64 + 1
    reserve = 2 * (len(str(store.data_dir)) + 120) + 100
    return max(1, min(500, (MOUNT_DATA_LIMIT - reserve) // per_layer))


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def merged_entries(layers: list[Path]) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(relative path, real path, lstat)`` of the merged view; ``layers`` bottom first."""
    top_first = [str(p) for p in reversed(layers)]
    roots = []
    for root in top_first:
        roots.append(root)
        if _is_opaque(root):
            break
    yield ".", top_first[0], os.lstat(top_first[0])
    yield from _walk("", roots)


def _walk(rel: str, dirs: list[str]) -> Iterator[tuple[str, str, os.stat_result]]:
    # ``dirs``: the layer roots in which ``rel`` is a visible directory, top first.
    seen: dict[str, tuple[str, os.stat_result] | None] = {}
    for root in dirs:
        base = os.path.join(root, rel) if rel else root
        with os.scandir(base) as it:
            for e in it:
                if e.name in seen:
                    continue
                st = e.stat(follow_symlinks=False)
                seen[e.name] = None if _is_whiteout(st) else (root, st)
    for name in sorted(seen):
        hit = seen[name]
        if hit is None:
            continue
        root, st = hit
        child = f"{rel}/{name}" if rel else name
        real = os.path.join(root, child)
        yield child, real, st
        if stat.S_ISDIR(st.st_mode):
            below = [root]
            if not _is_opaque(real):
                for lower in dirs[dirs.index(root) + 1:]:
                    try:
                        lst = os.lstat(os.path.join(lower, child))
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISDIR(lst.st_mode):
                        break  # a file or whiteout here hides everything further down
                    below.append(lower)
                    if _is_opaque(os.path.join(lower, child)):
                        break
            yield from _walk(child, below)


def _tarinfo(rel: str, real: str, st: os.stat_result,
             links: dict[tuple[int, int], str]) -> tarfile.TarInfo:
    ti = tarfile.TarInfo("./" if rel == "." else (rel + "/" if stat.S_ISDIR(st.st_mode) else rel))
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = st.st_mtime_ns // 1_000_000_000
    mode = st.st_mode
    key = (st.st_dev, st.st_ino)
    if stat.S_ISREG(mode) and st.st_nlink > 1 and key in links:
        ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
    elif stat.S_ISREG(mode):
        ti.type, ti.size = tarfile.REGTYPE, st.st_size
        if st.st_nlink > 1:
            links[key] = rel
    elif stat.S_ISDIR(mode):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(real)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        ti.type = tarfile.FIFOTYPE
    else:
        raise LayerError(f"cannot export {rel}: unsupported file type (socket?)")
    pax = {}
    sec, ns = divmod(st.st_mtime_ns, 1_000_000_000)
    if ns:
        pax["mtime"] = f"{sec}.{ns:09d}"
    try:
        names = os.listxattr(real, follow_symlinks=False)
    except OSError:
        names = []
    for n in names:
        if n.startswith("trusted.overlay."):
            continue
        value = os.getxattr(real, n, follow_symlinks=False)
        pax["SCHILY.xattr." + n] = value.decode("utf-8", "surrogateescape")
    if pax:
        ti.pax_headers = pax
    return ti


def export_tar(store: Store, rec: ImageRecord, out: BinaryIO) -> None:
    """Write the merged view of ``rec`` as an uncompressed rootfs tar to ``out``."""
    layers = store.layer_paths(rec)
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tf:
        for rel, real, st in merged_entries(layers):
            ti = _tarinfo(rel, real, st, links)
            if ti.type == tarfile.REGTYPE:
                with open(real, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)


def flatten_image(store: Store, rec: ImageRecord, *, sync: bool = True) -> ImageRecord:
    """A copy of ``rec`` with one layer holding its merged view (whiteouts applied).

    The merged view is exported into a pipe and extracted by the usual layer path, so the
    flattened layer is verified, atomic and keyed by the diff_id of that tar.
    """
    if len(rec.layers) <= 1:
        return replace(rec, flattened=rec.flattened)
    rfd, wfd = os.pipe()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with open(wfd, "wb", buffering=1 << 20) as w:
                export_tar(store, rec, w)
        except BaseException as e:  # reported by the consumer below
            errors.append(e)

    t = threading.Thread(target=produce, name="flatten-export", daemon=True)
    t.start()
    try:
        with open(rfd, "rb", buffering=1 << 20) as r:
            layer = add_layer(store, r, sync=sync)
    finally:
        t.join()
    if errors:
        raise errors[0]
    flat = LayerRecord(diff_id=layer.diff_id, digest=None, size=0,
                       media_type="application/vnd.oci.image.layer.v1.tar",
                       unpacked_size=layer.unpacked_size)
    return replace(rec, layers=[flat], flattened=True)
