"""The sandboxes' user namespace: one id mapping for every sandbox of a daemon.

Sandbox uids and gids 0..65535 are host ids ``base``..``base+65535`` (as Docker's
``userns-remap`` does): root in a sandbox is host uid ``base``, the sandbox user 1000 is
``base+1000``, and no id of a sandbox is an id that owns anything on the host.

The fork server makes the namespace once (``make_userns``) and keeps its fd; every PID 1
inherits it and, after its last mount, joins it (``enter``). The image layers and the
workspace are mounted *idmapped* through it (``namespaces.idmap_tree``), so the layer store
stays owned by host root on disk, and shows as owned by the sandbox's root inside.

``probe`` checks, once, that this kernel and the data directory's filesystem allow all of
it: an idmapped mount and an overlay over one.

Everything here runs in the fork server, single-threaded, before any sandbox exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from sandkasten.runtime.linux import namespaces as ns

SIZE = 65536
DEFAULT_BASE = 0x70000000  # 1879048192; see docs/security.md for why this range
ROOT_UID = 0


def id_map(base: int) -> str:
    """The single line of uid_map and gid_map: sandbox 0.. → host ``base``.."""
    return f"0 {base} {SIZE}\n"


def _fork_checked(body: object) -> tuple[int, int]:
    """Fork a child running ``body()``; return (pid, read end of its report pipe). The child
    writes ``b"ok"`` or an error message and exits; it never returns to the caller."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        os.close(r)
        msg = b"ok"
        try:
            body()  # type: ignore[operator]
        except BaseException as e:
            msg = str(e).encode() or type(e).__name__.encode()
        with contextlib.suppress(OSError):
            os.write(w, msg)
        os._exit(0)
    os.close(w)
    return pid, r


def make_userns(base: int) -> int:
    """A new user namespace mapping 0..65535 to ``base``.., as an O_RDONLY|O_CLOEXEC fd.

    A child unshares CLONE_NEWUSER and waits; we (host root) write its maps, open its
    namespace and let it go: the fd keeps the namespace alive without any process in it.
    Raises OSError naming what failed.
    """
    go_r, go_w = os.pipe2(os.O_CLOEXEC)

    def child() -> None:
        os.close(go_w)
        ns.unshare(ns.CLONE_NEWUSER)
        os.write(w_ready, b"u")
        os.read(go_r, 1)  # EOF: the parent is done with us

    r_ready, w_ready = os.pipe2(os.O_CLOEXEC)
    pid, r = _fork_checked(child)
    os.close(go_r)
    os.close(w_ready)
    try:
        if os.read(r_ready, 1) != b"u":
            raise OSError(1, f"unshare(CLONE_NEWUSER): {os.read(r, 4096).decode() or 'failed'}")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w", encoding="ascii") as f:
                f.write(id_map(base))
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(go_w)
        os.close(r_ready)
        os.close(r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def probe(userns_fd: int, base: int, scratch_parent: str) -> str | None:
    """None when an idmapped mount of a directory under ``scratch_parent`` (the data
    directory: layers and sessions live on its filesystem) and an overlay over it work;
    else the reason. Runs in a forked child with its own mount namespace, so no mount of
    the probe outlives it; the scratch directory is removed either way."""
    try:
        tmp = tempfile.mkdtemp(prefix=".userns-probe-", dir=scratch_parent)
    except OSError as e:
        return f"cannot create a scratch directory in {scratch_parent}: {e.strerror}"
    try:
        for d in ("layer", "lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(tmp, d))
        with open(os.path.join(tmp, "layer", "f"), "w", encoding="ascii"):
            pass

        def child() -> None:
            ns.unshare(ns.CLONE_NEWNS)
            ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
            fd = ns.open_tree_clone(os.path.join(tmp, "layer"), recursive=False)
            try:
                try:
                    ns.idmap_tree(fd, userns_fd, recursive=False)
                except OSError as e:
                    raise RuntimeError(f"its filesystem does not support idmapped mounts "
                                       f"({e.strerror})") from None
                ns.move_mount(fd, os.path.join(tmp, "lower"))
            finally:
                os.close(fd)
            if os.stat(os.path.join(tmp, "lower", "f")).st_uid != base:
                raise RuntimeError("the idmapped mount does not map ids")
            try:
                ns.mount("overlay", os.path.join(tmp, "merged"), "overlay", 0,
                         f"lowerdir={tmp}/lower,upperdir={tmp}/upper,workdir={tmp}/work")
            except OSError as e:
                raise RuntimeError(f"overlayfs refuses an idmapped lower layer "
                                   f"({e.strerror})") from None
            if os.stat(os.path.join(tmp, "merged", "f")).st_uid != base:
                raise RuntimeError("an overlay over an idmapped layer does not map ids")

        pid, r = _fork_checked(child)
        try:
            msg = os.read(r, 4096).decode(errors="replace")
        finally:
            os.close(r)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        return None if msg == "ok" else (msg or "the probe process died")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def setup(mode: str, base: int, scratch_parent: str) -> tuple[int | None, str | None]:
    """(userns fd or None, why not) for ``security.user_namespace`` = ``mode``.

    ``off``: (None, None). ``auto``/``on``: the namespace if ``make_userns`` and ``probe``
    succeed, else (None, reason); the caller refuses to start for ``on``.
    """
    if mode == "off":
        return None, None
    try:
        fd = make_userns(base)
    except OSError as e:
        return None, f"cannot create a user namespace: {e.strerror or e}"
    reason = probe(fd, base, scratch_parent)
    if reason is not None:
        os.close(fd)
        return None, f"idmapped layers do not work on {scratch_parent}: {reason}"
    return fd, None


def enter(userns_fd: int) -> None:
    """Join the sandboxes' user namespace as its root (host uid ``base``), no groups.

    Called by PID 1 after its last mount, single-threaded. From here on PID 1 has every
    capability of the sandboxes' user namespace and none in the host's: its mount, pid,
    net, uts, ipc and cgroup namespaces stay owned by the host's user namespace, so even
    root in a sandbox cannot mount, set the hostname or change a sysctl there.
    """
    ns.setns(userns_fd, ns.CLONE_NEWUSER)
    os.setgroups([])
    os.setresgid(ROOT_UID, ROOT_UID, ROOT_UID)
    os.setresuid(ROOT_UID, ROOT_UID, ROOT_UID)


def main(argv: list[str]) -> int:
    """``python -m sandkasten.runtime.linux.userns MODE BASE DATA_DIR``: what the fork
    server would decide, as one JSON line ``{"active": bool, "reason": str | null}``
    (``sandkasten doctor`` and ``security`` run it: a probe forks, which a CLI should not)."""
    import json

    mode, base, data_dir = argv[0], int(argv[1]), argv[2]
    fd, reason = setup(mode, base, data_dir)
    if fd is not None:
        os.close(fd)
    print(json.dumps({"active": fd is not None, "reason": reason}))
    return 0


if __name__ == "__main__":  # pragma: no cover - run by the CLI's checks
    import sys

    sys.exit(main(sys.argv[1:]))
