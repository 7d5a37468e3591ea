"""Plan a session: SessionSpec → ordered list of typed setup operations (pure, no I/O).

The plan is data, so it is tested without root; ``mounts.execute`` runs it in one place.
Order matters and is part of the contract:

  fork server
    ForkPid1        unshare(CLONE_NEWPID), fork, setns back: the child is PID 1 of a new
                    pid namespace, and the fork server's next children are not
  PID 1, still on the host's root, before it knows its session (``spare_plan``: the fork
  server keeps one such PID 1 forked ahead, so a create starts at ``Assign``)
    Unshare         uts, ipc and net (a net namespace is the costly one to make)
    LoopbackUp
    Assign          the session's request arrives (a marker: the fork server sends the
                    rest of the plan)
  PID 1 of a session
    JoinCgroup      first, and before CLONE_NEWCGROUP, so every process the sandbox ever
                    starts is in the session's cgroup and that cgroup is its cgroup root
    Unshare         mount (a copy of the host's mounts as they are now, however long the
                    spare waited) and cgroup
    MakePrivate     MS_PRIVATE|MS_REC on "/": nothing mounted later propagates either way
    Listen          bind sessions/<id>/runner.sock on the host (a restarted daemon finds it)
    SetHostname
    IdmapMount      with a user namespace only: each layer dir, cloned and idmapped through
                    it, onto sessions/<id>/lower/<i> (seen only in this mount namespace)
    PrepareUpper    with a user namespace only: the upper dir becomes the sandbox root's,
                    with the top layer's root mode (it is the sandbox's "/")
    MountOverlay    image layers (lowerdir, top first) + session upper/work → merged
    OpenBindSource  a detached clone of the workspace (idmapped with a user namespace),
                    taken before the host goes away
    PivotRoot       into merged; the old root is detached, never reachable again
  inside the root (every path below resolves inside the sandbox, symlinks included)
    Mount /proc, masks, /dev (tmpfs + device nodes + devpts + shm), /tmp, /workspace by fd,
    WriteFile /etc/{hosts,hostname,resolv.conf}, EnsureUser, RemountReadonly.
    EnterUserns     with a user namespace only, last: PID 1 joins it as its root and keeps
                    no privilege over the host's namespaces (``userns.enter``)

With a user namespace (``userns_base`` set), what setup creates (mount points, /etc files,
tmpfs roots) is owned by host uid ``userns_base``, i.e. root inside; device nodes stay host
root's and show as nobody inside.

Setup that follows symlinks happens only after PivotRoot, so a hostile image (say
``/workspace -> /etc`` or ``/etc/passwd -> /host/file``) can only point at its own files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sandkasten.runtime.base import SessionSpec
from sandkasten.runtime.linux import namespaces as ns
from sandkasten.runtime.linux.errors import ImageLayoutError

SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_USER = "sandbox"
OVERLAY_OPTIONS_MAX = 4095  # mount data is one page; a longer lowerdir needs flattening
_HOSTNAME_BAD = re.compile(r"[^a-z0-9-]")


@dataclass(frozen=True)
class JoinCgroup:
    name: str


@dataclass(frozen=True)
class Unshare:
    flags: int


@dataclass(frozen=True)
class MakePrivate:
    pass


@dataclass(frozen=True)
class ForkPid1:
    pass


@dataclass(frozen=True)
class Assign:
    """The end of the session-independent setup: what follows needs the request."""


@dataclass(frozen=True)
class Listen:
    """Bind and listen on the runner's Unix socket (a host path, mode 0600)."""

    path: str


@dataclass(frozen=True)
class SetHostname:
    name: str


@dataclass(frozen=True)
class LoopbackUp:
    pass


@dataclass(frozen=True)
class IdmapMount:
    """Clone the host dir ``source`` (a layer), idmap it, attach it on ``target`` (a host
    path, created if missing)."""

    source: str
    target: str


@dataclass(frozen=True)
class PrepareUpper:
    """Own ``path`` as ``uid``:``uid`` with the mode of ``mode_of`` (the top layer's root)."""

    path: str
    mode_of: str
    uid: int


@dataclass(frozen=True)
class EnterUserns:
    pass


@dataclass(frozen=True)
class MountOverlay:
    target: str
    options: str


@dataclass(frozen=True)
class OpenBindSource:
    key: str
    path: str
    idmap: bool = False  # through the sandboxes' user namespace (disk uid N = sandbox uid N)


@dataclass(frozen=True)
class PivotRoot:
    new_root: str


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    flags: int
    data: str | None = None
    mode: int = 0o755  # of the mount point when it has to be created
    owner: int = 0  # host uid (and gid) of the mount point when it has to be created


@dataclass(frozen=True)
class BindFd:
    """Bind the host object opened by ``OpenBindSource(key)`` onto ``target``."""

    key: str
    target: str
    owner: int = 0  # of the mount point when it has to be created


@dataclass(frozen=True)
class ReadonlyBind:
    """Bind ``path`` onto itself read-only (a /proc entry that must not be written)."""

    path: str


@dataclass(frozen=True)
class MaskFile:
    """Hide a file behind /dev/null (missing paths are skipped)."""

    path: str


@dataclass(frozen=True)
class MakeDevice:
    path: str
    major: int
    minor: int
    mode: int = 0o666


@dataclass(frozen=True)
class Symlink:
    target: str
    path: str
    owner: int = 0


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str
    mode: int = 0o644
    owner: int = 0  # host uid and gid of the file (and of parent dirs it creates)


@dataclass(frozen=True)
class EnsureUser:
    name: str
    uid: int
    gid: int
    home: str
    owner: int = 0  # host owner of /etc/passwd and /etc/group when they are rewritten


@dataclass(frozen=True)
class RemountReadonly:
    path: str = "/"


Op = (JoinCgroup | Unshare | MakePrivate | ForkPid1 | Assign | Listen
      | SetHostname | LoopbackUp | IdmapMount | PrepareUpper | MountOverlay | OpenBindSource
      | PivotRoot | Mount | BindFd | ReadonlyBind | MaskFile | MakeDevice | Symlink
      | WriteFile | EnsureUser | RemountReadonly | EnterUserns)


@dataclass(frozen=True)
class SessionPaths:
    """Where a session lives on the host: sessions/<id>/..."""

    root: Path

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def lower(self, i: int) -> Path:
        """Mount point of layer ``i`` (bottom-most 0), idmapped, with a user namespace."""
        return self.root / "lower" / str(i)

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def socket(self) -> Path:
        return self.root / "runner.sock"

    @property
    def state(self) -> Path:
        return self.root / "state.json"


def hostname_for(session_id: str) -> str:
    name = _HOSTNAME_BAD.sub("-", session_id.lower()).strip("-")[:63]
    return name or "sandbox"


def overlay_options(layers: list[Path], upper: Path, work: Path) -> str:
    """Overlay mount data; ``layers`` bottom-most first (overlay wants the top first)."""
    if not layers:
        raise ImageLayoutError("an image needs at least one layer")
    for path in [*layers, upper, work]:
        if any(c in str(path) for c in ",:\\\n"):
            raise ImageLayoutError(f"path not usable in overlay options: {path}")
    lower = ":".join(str(p) for p in reversed(layers))
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if len(opts) > OVERLAY_OPTIONS_MAX:
        raise ImageLayoutError(
            f"{len(layers)} layers exceed the overlay mount option limit; flatten the image",
            hint="sandkasten image pull --flatten ...")
    return opts


# CLONE_NEWPID is ForkPid1's: the fork server creates the pid namespace with PID 1 in it.
# The cgroup namespace comes after JoinCgroup (its root is the cgroup of the unsharer);
# the others before the session is known.
EARLY_NS_FLAGS = ns.CLONE_NEWUTS | ns.CLONE_NEWIPC | ns.CLONE_NEWNET
SESSION_NS_FLAGS = ns.CLONE_NEWNS | ns.CLONE_NEWCGROUP
NS_FLAGS = EARLY_NS_FLAGS | SESSION_NS_FLAGS
_NOSUID_NODEV = ns.MS_NOSUID | ns.MS_NODEV
_PROC_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
_PROC_MASKED = ("/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/sched_debug")
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
            ("urandom", 1, 9), ("tty", 5, 0))


def hosts_file(hostname: str) -> str:
    return (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n")


def resolv_conf(network_mode: str) -> str:
    if network_mode == "none":
        return "# network mode none: loopback only, no DNS\n"
    return "nameserver 127.0.0.53\n"  # pragma: no cover - only "none" exists today


def spare_plan() -> list[Op]:
    """What PID 1 does before it knows its session: the same for every session (network
    mode ``none`` is the only one), so a PID 1 forked ahead of any request has done it."""
    return [Unshare(EARLY_NS_FLAGS), LoopbackUp()]


def _tmpfs(data: str, owner: int) -> str:
    return f"{data},uid={owner},gid={owner}" if owner else data


def plan_session(spec: SessionSpec, paths: SessionPaths, cgroup: str | None,
                 userns_base: int | None = None) -> list[Op]:
    """The full, ordered list of setup operations for ``spec``: ``ForkPid1``, the
    ``spare_plan``, ``Assign``, then the session's own steps.

    ``userns_base``: the host id that sandbox id 0 maps to when sandboxes run in the
    daemon's user namespace (``userns``); None runs them without one.
    """
    hostname = hostname_for(spec.id)
    workspace = spec.workspace_dir if spec.workspace_dir is not None else paths.workspace
    if spec.network_mode != "none":  # pragma: no cover - only "none" exists today
        raise ImageLayoutError(f"network mode {spec.network_mode!r} is not supported")
    idmap = userns_base is not None
    owner = userns_base or 0  # host uid of root inside; 0 (no chown at all) without userns
    if idmap:
        lowers = [paths.lower(i) for i in range(len(spec.layer_paths))]
    else:
        lowers = list(spec.layer_paths)
    ops: list[Op] = [ForkPid1(), *spare_plan(), Assign()]
    if cgroup is not None:
        ops.append(JoinCgroup(cgroup))
    ops += [
        Unshare(SESSION_NS_FLAGS),
        MakePrivate(),
        Listen(str(paths.socket)),
        SetHostname(hostname),
    ]
    if idmap:
        ops += [IdmapMount(str(src), str(dst)) for src, dst in zip(spec.layer_paths, lowers,
                                                                   strict=True)]
        ops.append(PrepareUpper(str(paths.upper), str(spec.layer_paths[-1]), owner))
    ops += [
        MountOverlay(str(paths.merged), overlay_options(lowers, paths.upper, paths.work)),
        OpenBindSource("workspace", str(workspace), idmap=idmap),
        PivotRoot(str(paths.merged)),
        Mount("proc", "/proc", "proc", _NOSUID_NODEV | ns.MS_NOEXEC, owner=owner),
        *[ReadonlyBind(p) for p in _PROC_READONLY],
        Mount("tmpfs", "/dev", "tmpfs", ns.MS_NOSUID | ns.MS_NOEXEC,
              _tmpfs("mode=755,size=65536k", owner), owner=owner),
        *[MakeDevice(f"/dev/{name}", major, minor) for name, major, minor in _DEVICES],
        *[MaskFile(p) for p in _PROC_MASKED],
        # ptys: PID 1 opens /dev/ptmx after EnterUserns (so the pty is its own) and hands
        # the slave to the sandbox user; ptmx itself is 0666
        Mount("devpts", "/dev/pts", "devpts", ns.MS_NOSUID | ns.MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620", owner=owner),
        Symlink("pts/ptmx", "/dev/ptmx", owner=owner),
        Symlink("/proc/self/fd", "/dev/fd", owner=owner),
        Symlink("/proc/self/fd/0", "/dev/stdin", owner=owner),
        Symlink("/proc/self/fd/1", "/dev/stdout", owner=owner),
        Symlink("/proc/self/fd/2", "/dev/stderr", owner=owner),
        Mount("shm", "/dev/shm", "tmpfs", _NOSUID_NODEV, _tmpfs("mode=1777", owner),
              mode=0o1777, owner=owner),
        Mount("tmpfs", "/tmp", "tmpfs", _NOSUID_NODEV, _tmpfs("mode=1777", owner),
              mode=0o1777, owner=owner),
        BindFd("workspace", "/workspace", owner=owner),
        WriteFile("/etc/hostname", hostname + "\n", owner=owner),
        WriteFile("/etc/hosts", hosts_file(hostname), owner=owner),
        WriteFile("/etc/resolv.conf", resolv_conf(spec.network_mode), owner=owner),
        EnsureUser(SANDBOX_USER, SANDBOX_UID, SANDBOX_GID, "/workspace", owner=owner),
    ]
    if spec.readonly_rootfs:
        ops.append(RemountReadonly("/"))
    if idmap:
        ops.append(EnterUserns())
    return ops
