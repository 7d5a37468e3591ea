"""Compare two directory trees file by file, as a container runtime would see them.

``compare_trees(a, b)`` returns a list of human-readable differences (empty when equal):
file type, permission bits including setuid/setgid/sticky, uid/gid, content (sha256),
symlink target, hardlink groups, xattrs (``trusted.overlay.*`` included), device numbers
and, when asked, mtimes. The roots' own metadata is compared too (path ``.``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path, *, mtime: bool = False) -> dict[str, dict[str, Any]]:
    """Relative path → facts for every entry below ``root`` (never following symlinks)."""
    facts: dict[str, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames] if dirpath == str(root) else [*dirnames,
                                                                               *filenames]:
            full = os.path.join(dirpath, name) if name != "." else dirpath
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mode = st.st_mode
            f: dict[str, Any] = {
                "type": stat.S_IFMT(mode),
                "mode": oct(stat.S_IMODE(mode)),
                "owner": (st.st_uid, st.st_gid),
                "xattrs": _xattrs(full),
            }
            if stat.S_ISREG(mode):
                f["sha256"] = _sha256(full)
                f["size"] = st.st_size
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(mode):
                f["target"] = os.readlink(full)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                f["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if mtime and not stat.S_ISLNK(mode):
                f["mtime"] = st.st_mtime_ns // 1000  # microseconds: tar formats differ below
            facts[rel] = f
    for group in inodes.values():
        if len(group) < 2:
            continue  # the other names of this inode are not in the tree (e.g. hidden)
        key = tuple(sorted(group))
        for rel in group:
            facts[rel]["hardlinks"] = key
    return facts


def compare_trees(a: Path, b: Path, *, mtime: bool = False) -> list[str]:
    """Differences between the trees at ``a`` and ``b``; ``[]`` when identical."""
    fa, fb = snapshot(Path(a), mtime=mtime), snapshot(Path(b), mtime=mtime)
    diffs = []
    for rel in sorted(fa.keys() - fb.keys()):
        diffs.append(f"only in {a}: {rel}")
    for rel in sorted(fb.keys() - fa.keys()):
        diffs.append(f"only in {b}: {rel}")
    for rel in sorted(fa.keys() & fb.keys()):
        x, y = fa[rel], fb[rel]
        for key in sorted(x.keys() | y.keys()):
            if x.get(key) != y.get(key):
                diffs.append(f"{rel}: {key} differs: {x.get(key)!r} != {y.get(key)!r}")
    return diffs
