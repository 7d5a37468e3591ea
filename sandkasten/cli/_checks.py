"""The checks behind ``sandkasten doctor`` and ``sandkasten security``.

Each check reads the host or the config and returns a ``Check``: a status, what was found,
and the fix. The parsers (mountinfo, cgroup controllers, filesystems) are pure functions
over text, tested with tables; only ``host_facts`` and the overlay probe touch the system.
Nothing here changes the host except the overlay probe, which mounts and unmounts a
scratch overlay in a temporary directory under the data directory and removes it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "warn", "fail", "info"]
REQUIRED_CONTROLLERS = ("cpu", "memory", "pids")
#: Filesystems that cannot hold overlayfs upper dirs (WSL's Windows drives among them).
WINDOWS_FILESYSTEMS = frozenset({"9p", "v9fs", "drvfs", "ntfs", "ntfs3", "fuseblk", "vfat",
                                 "exfat", "msdos"})
SEED_NTFS_ADVICE = (
    "use a path on the Linux filesystem (e.g. /var/lib/sandkasten): do not use /mnt/c/... "
    "- NTFS does not support overlayfs"
)
SEED_CGROUP_ADVICE = (
    "enable unified cgroups: add `kernelCommandLine=systemd.unified_cgroup_hierarchy=1 "
    "cgroup_no_v1=all` under [wsl2] in C:\\Users\\<you>\\.wslconfig, then `wsl --shutdown` "
    "(see docs/windows.md); on other hosts boot with cgroup v2 or mount the v1 controllers"
)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        tag = {"ok": " ok ", "warn": "warn", "fail": "FAIL", "info": "info"}[self.status]
        text = f"[{tag}] {self.name:<14} {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix and self.status != "ok" else text


# ---- mountinfo and cgroups (pure) -------------------------------------------------------

@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str
    source: str
    super_options: str


def parse_mountinfo(text: str) -> list[Mount]:
    """Entries of /proc/self/mountinfo (proc(5)); octal escapes in paths decoded."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 2:
            continue
        point = fields[4].encode().decode("unicode_escape")
        mounts.append(Mount(point, rfields[0], rfields[1], rfields[2] if len(rfields) > 2 else ""))
    return mounts


def mount_for(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds ``path`` (longest mountpoint prefix; the last one wins on ties,
    as the kernel stacks them)."""
    best: Mount | None = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if (path == mp or path.startswith(mp + "/") or mp == "/") and (
            best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/")
        ):
            best = m
    return best


@dataclass(frozen=True)
class CgroupFacts:
    version: int | None           # 2, 1, or None when neither is usable
    enforceable: tuple[str, ...]  # controllers among REQUIRED_CONTROLLERS that work
    layout: str                   # "unified", "hybrid", "legacy", "none"


def cgroup_facts(mounts: list[Mount], v2_controllers: str | None) -> CgroupFacts:
    """Which cgroup hierarchy a runtime would use and which required controllers it can
    enforce. ``v2_controllers`` is the text of cgroup.controllers of the v2 mount, if any."""
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    v1 = {opt for m in mounts if m.fstype == "cgroup" for opt in m.super_options.split(",")}
    v1_ok = tuple(c for c in REQUIRED_CONTROLLERS if c in v1)
    v2_ok = tuple(c for c in REQUIRED_CONTROLLERS if c in (v2_controllers or "").split())
    root_v2 = any(m.mountpoint == "/sys/fs/cgroup" for m in v2)
    layout = "unified" if root_v2 else "hybrid" if v2 and v1 else "legacy" if v1 else "none"
    if len(v2_ok) == len(REQUIRED_CONTROLLERS):
        return CgroupFacts(2, v2_ok, layout)
    if len(v1_ok) == len(REQUIRED_CONTROLLERS):
        return CgroupFacts(1, v1_ok, layout)
    best = v2_ok if len(v2_ok) >= len(v1_ok) else v1_ok
    return CgroupFacts(None, best, layout)


def kernel_tuple(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


def is_wsl1(release: str) -> bool:
    """WSL1 has no Linux kernel; it reports a fixed 4.4.0-...-Microsoft release."""
    return release.startswith("4.4.0") and release.endswith("Microsoft")


# ---- doctor checks -----------------------------------------------------------------------

def check_kernel(release: str) -> Check:
    if kernel_tuple(release) < (5, 4):
        return Check("kernel", "warn", f"{release} (older than 5.4)",
                     "use a kernel >= 5.4 for overlayfs and cgroup features Sandkasten uses")
    return Check("kernel", "ok", release)


def check_cgroups(facts: CgroupFacts) -> Check:
    enforce = ", ".join(facts.enforceable) or "none"
    if facts.version is None:
        missing = ", ".join(c for c in REQUIRED_CONTROLLERS if c not in facts.enforceable)
        return Check("cgroups", "fail",
                     f"cannot enforce {missing} (layout: {facts.layout}; usable: {enforce})",
                     SEED_CGROUP_ADVICE)
    return Check("cgroups", "ok", f"v{facts.version} ({facts.layout}): {enforce} enforceable")


def check_overlay_support(filesystems: str) -> Check:
    if any(line.split()[-1:] == ["overlay"] for line in filesystems.splitlines()):
        return Check("overlayfs", "ok", "supported by the kernel")
    return Check("overlayfs", "fail", "overlay is not in /proc/filesystems",
                 "load it with `modprobe overlay` (or use a kernel with CONFIG_OVERLAY_FS)")


def check_data_dir_fs(data_dir: str, mount: Mount | None) -> Check:
    fstype = mount.fstype if mount else "unknown"
    on_windows_drive = re.match(r"^/mnt/[A-Za-z](/|$)", data_dir) is not None
    if fstype in WINDOWS_FILESYSTEMS or on_windows_drive:
        return Check("data dir fs", "fail", f"{data_dir} is on {fstype} (a Windows drive)",
                     SEED_NTFS_ADVICE)
    return Check("data dir fs", "ok", f"{data_dir} on {fstype}")


def check_wsl(release: str, inside_wsl: bool) -> Check:
    if not inside_wsl:
        return Check("wsl", "info", "not running under WSL")
    if is_wsl1(release):
        return Check("wsl", "fail", "WSL1 (no Linux kernel: no namespaces, cgroups, overlayfs)",
                     "convert the distribution: `wsl --set-version <distro> 2` in PowerShell")
    return Check("wsl", "ok", "WSL2")


def check_root(euid: int) -> Check:
    if euid != 0:
        return Check("root", "fail", f"running as uid {euid}",
                     "the daemon needs root for namespaces, mounts and cgroups: use sudo")
    return Check("root", "ok", "running as root")


def check_health(url: str, timeout: float = 2.0) -> Check:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http URL
            body = resp.read(1024)
        ok = json.loads(body).get("status") == "ok"
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as e:
        reason = getattr(e, "reason", e)
        return Check("daemon", "warn", f"{url} not answering ({reason})",
                     "start it: sudo sandkasten daemon -d --config <your config>")
    if not ok:
        return Check("daemon", "warn", f"{url} answered {body[:80]!r}", "see `sandkasten logs`")
    return Check("daemon", "ok", f"{url} answered {{\"status\":\"ok\"}}")


def probe_overlay(data_dir: Path) -> Check:
    """Mount a scratch overlay whose upper dir is on the data directory's filesystem: the
    only sure test for "overlayfs: upper fs does not support xattrs"."""
    if not data_dir.is_dir() or os.geteuid() != 0 or not shutil.which("mount"):
        return Check("overlay mount", "info", "skipped (needs root and an existing data dir)")
    tmp = Path(tempfile.mkdtemp(prefix=".doctor-", dir=data_dir))
    try:
        for d in ("lower", "upper", "work", "merged"):
            (tmp / d).mkdir()
        opts = f"lowerdir={tmp / 'lower'},upperdir={tmp / 'upper'},workdir={tmp / 'work'}"
        res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts,
                              str(tmp / "merged")], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            return Check("overlay mount", "fail",
                         f"cannot mount overlayfs on {data_dir}: {res.stderr.strip()}",
                         SEED_NTFS_ADVICE)
        subprocess.run(["umount", str(tmp / "merged")], check=False, capture_output=True)
        return Check("overlay mount", "ok", f"overlayfs works with upper dirs on {data_dir}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


USERNS_DEFAULT_BASE = 0x70000000
USERNS_FIX = ("a kernel of 5.19 or later with user namespaces enabled, and a data_dir on a "
              "filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs)")


def userns_settings(cfg: dict[str, Any]) -> tuple[str, int]:
    """(security.user_namespace, security.userns_base) of a raw config dict."""
    sec = cfg.get("security") or {}
    mode = sec.get("user_namespace", "auto")
    mode = {True: "on", False: "off"}.get(mode, mode) if isinstance(mode, bool) else str(mode)
    try:
        base = int(sec.get("userns_base", USERNS_DEFAULT_BASE))
    except (TypeError, ValueError):
        base = USERNS_DEFAULT_BASE
    return mode, base


def probe_userns(data_dir: Path, mode: str, base: int) -> dict[str, Any] | None:
    """What the daemon's fork server would find: ``{"active", "reason"}``; None when it
    cannot be probed here (not root, no data dir, or the mode is off)."""
    if mode == "off" or os.geteuid() != 0 or not data_dir.is_dir():
        return None
    res = subprocess.run([sys.executable, "-m", "sandkasten.runtime.linux.userns", mode,
                          str(base), str(data_dir)],
                         capture_output=True, text=True, check=False, timeout=30)
    try:
        out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        return out
    except (ValueError, IndexError):
        return {"active": False, "reason": (res.stderr.strip().splitlines() or ["?"])[-1]}


def check_userns(mode: str, base: int, probe: dict[str, Any] | None) -> Check:
    """The ``security.user_namespace`` line: the mode and, where probed, what is active."""
    mapping = f"sandbox ids 0..65535 are host ids {base}..{base + 65535}"
    if mode == "off":
        return Check("user namespace", "warn",
                     "off: root in a sandbox is host root (without capabilities)",
                     "set security.user_namespace: auto")
    if mode not in ("auto", "on"):
        return Check("user namespace", "fail", f"unknown mode {mode!r}", "use auto, on or off")
    if probe is None:
        return Check("user namespace", "info",
                     f"{mode} ({mapping}); not probed: needs root and an existing data dir")
    if probe.get("active"):
        return Check("user namespace", "ok", f"{mode}: active, {mapping}")
    reason = probe.get("reason") or "unavailable"
    if mode == "on":
        return Check("user namespace", "fail",
                     f"on, but {reason}: the daemon refuses to start", USERNS_FIX)
    return Check("user namespace", "warn",
                 f"auto, not available ({reason}): sandboxes run without one", USERNS_FIX)


def host_facts() -> dict[str, Any]:
    """Read what the doctor checks need from /proc and /sys (missing files read as '')."""
    def read(p: str) -> str:
        try:
            return Path(p).read_text()
        except OSError:
            return ""
    mounts = parse_mountinfo(read("/proc/self/mountinfo"))
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    controllers = read(os.path.join(v2[0].mountpoint, "cgroup.controllers")) if v2 else None
    return {"release": platform.release(), "mounts": mounts, "v2_controllers": controllers,
            "filesystems": read("/proc/filesystems")}


# ---- security baseline (pure over the config dict and file modes) ------------------------

def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]") or "0.0.0.0"  # noqa: S104 - a default, not a bind
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_checks(cfg: dict[str, Any], *, config_mode: int | None,
                    data_dir_stat: os.stat_result | None, log_modes: dict[str, int]) -> list[Check]:
    """The hardening baseline for one config. ``config_mode``/``log_modes`` are st_mode
    values (None/empty when the file does not exist)."""
    out: list[Check] = []
    listen = str(cfg.get("listen") or "127.0.0.1:8080")
    key = str(cfg.get("api_key") or "")
    loop = _loopback(listen)
    if not key:
        out.append(Check("api key", "fail" if not loop else "warn",
                         f"empty while listening on {listen}",
                         "set api_key (sandkasten init writes a random one); the daemon refuses "
                         "a non-loopback listen address without one"))
    elif key == "sk-sandbox-test" or len(key) < 16:
        out.append(Check("api key", "warn", "short or the documentation's example key",
                         "use a random key of 32+ characters: "
                         "python3 -c 'import secrets; print(\"sk-\" + secrets.token_urlsafe(32))'"))
    else:
        out.append(Check("api key", "ok", f"set ({len(key)} characters)"))
    if loop:
        out.append(Check("listen", "ok", f"{listen} (loopback only)"))
    else:
        out.append(Check("listen", "warn", f"{listen} is reachable from the network",
                         "listen on 127.0.0.1 and put a TLS reverse proxy in front"))
    seccomp = str((cfg.get("security") or {}).get("seccomp") or "mvp")
    out.append({
        "off": Check("seccomp", "fail", "off: every syscall is allowed",
                     "set security.seccomp: mvp (or strict)"),
        "mvp": Check("seccomp", "ok", "mvp profile (dangerous syscalls blocked)"),
        "strict": Check("seccomp", "ok", "strict profile"),
    }.get(seccomp, Check("seccomp", "fail", f"unknown profile {seccomp!r}",
                         "use off, mvp or strict")))
    d = cfg.get("defaults") or {}
    if d.get("readonly_rootfs"):
        out.append(Check("readonly rootfs", "ok", "image root is read-only in sessions"))
    else:
        out.append(Check("readonly rootfs", "warn", "sessions may write anywhere in their root",
                         "set defaults.readonly_rootfs: true if your agents only need "
                         "/workspace and /tmp"))
    missing = [k for k in ("cpu_limit", "mem_limit_mb", "pids_limit") if not d.get(k)]
    if missing:
        out.append(Check("limits", "warn", f"no default {', '.join(missing)}",
                         "set defaults.cpu_limit, mem_limit_mb and pids_limit "
                         "(e.g. 1.0, 512, 256)"))
    else:
        out.append(Check("limits", "ok", f"cpu {d['cpu_limit']}, {d['mem_limit_mb']} MB, "
                                         f"{d['pids_limit']} pids"))
    net = str(d.get("network_mode") or "none")
    out.append(Check("network", "ok", "network_mode none (no network in sandboxes)")
               if net == "none" else
               Check("network", "warn", f"network_mode {net}: sandboxes reach the network",
                     "use network_mode: none unless agents need it"))
    if config_mode is not None and key and config_mode & 0o077:
        out.append(Check("config file", "fail",
                         f"mode {stat.S_IMODE(config_mode):04o}: others can read the api_key",
                         "chmod 600 <config>"))
    elif config_mode is not None:
        out.append(Check("config file", "ok", f"mode {stat.S_IMODE(config_mode):04o}"))
    bad_logs = [p for p, m in log_modes.items() if m & 0o077]
    if bad_logs:
        out.append(Check("log files", "fail", f"readable by others: {', '.join(bad_logs)}",
                         "chmod 600 " + " ".join(bad_logs)))
    else:
        out.append(Check("log files", "ok", "0600" if log_modes else "none yet"))
    if data_dir_stat is None:
        out.append(Check("data dir", "warn", "does not exist", "run sandkasten init"))
    else:
        mode = stat.S_IMODE(data_dir_stat.st_mode)
        if data_dir_stat.st_uid != 0 or mode & 0o022:
            out.append(Check("data dir", "fail",
                             f"owner uid {data_dir_stat.st_uid}, mode {mode:04o}: others may "
                             "change images or sessions", "chown root: and chmod 700 the data dir"))
        elif mode & 0o005:
            out.append(Check("data dir", "warn", f"mode {mode:04o}: others can read workspaces",
                             "chmod 700 the data dir"))
        else:
            out.append(Check("data dir", "ok", f"owned by root, mode {mode:04o}"))
    return out
