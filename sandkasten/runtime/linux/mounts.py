"""Execute a session plan (``plan.plan_session``): the one place that mounts with privilege.

``execute(ops, ctx)`` runs ops in order and raises ``SetupStepError`` naming the failed op.
Runs in PID 1 before the runner starts (a fresh fork of the fork server); it imports nothing
at call time (everything is imported when the fork server loads this module).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sandkasten.runtime.linux import namespaces as ns
from sandkasten.runtime.linux import plan as pl
from sandkasten.runtime.linux import unixaddr, userns


class SetupStepError(Exception):
    def __init__(self, op: pl.Op, err: BaseException) -> None:
        super().__init__(f"{type(op).__name__} {_describe(op)}: {err}")
        self.op = op


def _describe(op: pl.Op) -> str:
    for attr in ("target", "path", "name", "new_root"):
        if hasattr(op, attr):
            return str(getattr(op, attr))
    return ""


@dataclass
class Context:
    join_cgroup: Callable[[str], None] | None = None
    fds: dict[str, int] = field(default_factory=dict)
    listener: socket.socket | None = None  # made by Listen, kept by the caller
    userns_fd: int | None = None  # the sandboxes' user namespace (the fork server's fd)

    def close(self) -> None:
        """Close every fd setup held, the user namespace's included: none reaches the
        runner (PID 1 is in that namespace by now, or never enters one)."""
        if self.userns_fd is not None:
            self.fds["userns"] = self.userns_fd
            self.userns_fd = None
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def _mkdirs(path: str, mode: int, owner: int = 0) -> None:
    """Create ``path`` (inside the sandbox root) if missing, owned by host uid and gid
    ``owner``; an existing one (a symlink included) is left as it is."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        _mkdirs(os.path.dirname(path), 0o755, owner)
        _mkdirs(path, mode, owner)
        return
    # no process of the sandbox exists yet: nothing can swap the new dir for a symlink
    os.chmod(path, mode)  # umask-proof
    if owner:
        os.chown(path, owner, owner)


def _write_file(op: pl.WriteFile) -> None:
    _mkdirs(os.path.dirname(op.path), 0o755, op.owner)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(op.path)  # the image's file or symlink: we replace it, never write through
    fd = os.open(op.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, op.mode)
    try:
        os.write(fd, op.content.encode())
        if op.owner:
            os.fchown(fd, op.owner, op.owner)
        os.fchmod(fd, op.mode)  # after fchown, which clears setuid/setgid bits
    finally:
        os.close(fd)


def _ensure_user(op: pl.EnsureUser) -> None:
    """Add the sandbox user and group to /etc/passwd and /etc/group if the name is absent."""
    _mkdirs("/etc", 0o755, op.owner)
    for path, line, name in (
        ("/etc/passwd", f"{op.name}:x:{op.uid}:{op.gid}:{op.name}:{op.home}:/bin/sh\n", op.name),
        ("/etc/group", f"{op.name}:x:{op.gid}:\n", op.name),
    ):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except (FileNotFoundError, IsADirectoryError):
            text = ""
        if any(ln.split(":", 1)[0] == name for ln in text.splitlines()):
            continue
        if text and not text.endswith("\n"):
            text += "\n"
        _write_file(pl.WriteFile(path, text + line, 0o644, op.owner))


def _readonly_bind(path: str) -> None:
    try:
        ns.mount(path, path, None, ns.MS_BIND | ns.MS_REC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return
        raise
    ns.mount(None, path, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID
             | ns.MS_NODEV | ns.MS_NOEXEC)


def _userns(ctx: Context) -> int:
    if ctx.userns_fd is None:
        raise OSError(22, "the plan needs the sandboxes' user namespace, which is not set up")
    return ctx.userns_fd


def _idmap_mount(op: pl.IdmapMount, ctx: Context) -> None:
    """Attach an idmapped clone of the layer ``op.source`` on ``op.target``. The clone is
    attached in this (private) mount namespace only; the host never sees it."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(os.path.dirname(op.target), 0o700)
    with contextlib.suppress(FileExistsError):
        os.mkdir(op.target, 0o700)
    fd = ns.open_tree_clone(op.source, recursive=False)
    try:
        ns.idmap_tree(fd, _userns(ctx), recursive=False)
        ns.move_mount(fd, op.target)
    finally:
        os.close(fd)


def run_op(op: pl.Op, ctx: Context) -> None:
    if isinstance(op, pl.JoinCgroup):
        if ctx.join_cgroup is not None:
            ctx.join_cgroup(op.name)
    elif isinstance(op, pl.Unshare):
        ns.unshare(op.flags)
    elif isinstance(op, pl.MakePrivate):
        ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
    elif isinstance(op, pl.Listen):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(op.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # a long data_dir's path does not fit sockaddr_un: bind through the directory
            with unixaddr.short_path(op.path) as addr:
                listener.bind(addr)
            # the session directory is 0700 root, so nobody can reach the socket before this
            os.chmod(op.path, 0o600)
            listener.listen(128)
        except BaseException:
            listener.close()
            raise
        ctx.listener = listener
    elif isinstance(op, pl.SetHostname):
        ns.sethostname(op.name)
    elif isinstance(op, pl.LoopbackUp):
        ns.loopback_up()
    elif isinstance(op, pl.IdmapMount):
        _idmap_mount(op, ctx)
    elif isinstance(op, pl.PrepareUpper):
        mode = stat.S_IMODE(os.stat(op.mode_of).st_mode)
        os.chown(op.path, op.uid, op.uid)
        os.chmod(op.path, mode)
    elif isinstance(op, pl.MountOverlay):
        # nodev: a device node in an image (say a 0666 block or console device) opens
        # nothing; the sandbox's devices are the ones on its own /dev. nosuid: setuid bits
        # of the image never apply (user commands also run with no_new_privs).
        ns.mount("overlay", op.target, "overlay", ns.MS_NOSUID | ns.MS_NODEV, op.options)
    elif isinstance(op, pl.OpenBindSource):
        fd = ns.open_tree_clone(op.path)
        ctx.fds[op.key] = fd
        try:
            ns.harden_tree(fd, _userns(ctx) if op.idmap else None)
        except OSError as e:
            if not (op.idmap and e.errno == errno.EINVAL):
                raise
            raise OSError(e.errno, "its filesystem cannot be idmapped into the sandboxes' "
                          "user namespace (tmpfs before Linux 6.3, network filesystems): "
                          "keep workspaces on the data directory's filesystem, or set "
                          "security.user_namespace: off") from None
    elif isinstance(op, pl.PivotRoot):
        # pivot_root(".", "."): the old root ends up stacked under the new one and is
        # detached right away, so no path inside the sandbox ever leads back to the host.
        os.chdir(op.new_root)
        ns.pivot_root(".", ".")
        ns.umount2(".", ns.MNT_DETACH)
        os.chdir("/")
    elif isinstance(op, pl.Mount):
        _mkdirs(op.target, op.mode, op.owner)
        ns.mount(op.source, op.target, op.fstype, op.flags, op.data)
    elif isinstance(op, pl.BindFd):
        _mkdirs(op.target, 0o755, op.owner)
        # the detached copy of the host directory taken before pivot_root
        ns.move_mount(ctx.fds[op.key], op.target)
    elif isinstance(op, pl.ReadonlyBind):
        _readonly_bind(op.path)
    elif isinstance(op, pl.MaskFile):
        if os.path.exists(op.path):
            ns.mount("/dev/null", op.path, None, ns.MS_BIND)
    elif isinstance(op, pl.MakeDevice):
        os.mknod(op.path, stat.S_IFCHR | op.mode, os.makedev(op.major, op.minor))
        os.chmod(op.path, op.mode)
    elif isinstance(op, pl.Symlink):
        try:
            os.symlink(op.target, op.path)
        except FileExistsError:
            pass
        else:
            if op.owner:
                os.lchown(op.path, op.owner, op.owner)
    elif isinstance(op, pl.WriteFile):
        _write_file(op)
    elif isinstance(op, pl.EnsureUser):
        _ensure_user(op)
    elif isinstance(op, pl.RemountReadonly):
        # a bind remount sets exactly these flags: nosuid and nodev are kept by naming them
        ns.mount(None, op.path, None, ns.MS_REMOUNT | ns.MS_BIND | ns.MS_RDONLY
                 | ns.MS_NOSUID | ns.MS_NODEV)
    elif isinstance(op, pl.EnterUserns):
        userns.enter(_userns(ctx))
    else:  # ForkPid1 and Assign are the fork server's to handle
        raise TypeError(f"cannot execute {op!r} here")


def execute(ops: list[pl.Op], ctx: Context,
            stamps: list[tuple[str, int]] | None = None) -> None:
    """Run ``ops`` in order; with ``stamps``, append (op type, perf_counter_ns) after each."""
    for op in ops:
        try:
            run_op(op, ctx)
        except SetupStepError:
            raise
        except Exception as e:
            raise SetupStepError(op, e) from None
        if stamps is not None:
            stamps.append((type(op).__name__, time.perf_counter_ns()))
