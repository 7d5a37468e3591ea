"""The fork server: a single-threaded process, the runner preloaded, that forks sandboxes.

Why: the daemon is multi-threaded (uvicorn, asyncio executors), and forking it is unsafe;
a Python start-up per session costs tens of milliseconds. The fork server is started once
(``python -m sandkasten.runtime.linux.forkserver``), imports every module a sandbox needs,
and then only forks. Creating a session:

    fork server: unshare(CLONE_NEWPID), fork, setns back to its own pid namespace
        └─▶ PID 1 of the new pid namespace: setsid, stdio → /dev/null, join the cgroup
            (first, so every process of the sandbox starts in it), unshare (mnt uts ipc
            net cgroup), make "/" private, bind sessions/<id>/runner.sock (a host path,
            so a restarted daemon can reconnect), hostname, lo up, overlay, pivot_root,
            /proc /dev /tmp /workspace, /etc files; reports ready; non-dumpable; serves.
    The fork server is a child subreaper and PID 1's parent; if it dies, PID 1 moves on to
    the next subreaper or the host's init: a sandbox outlives the daemon and the fork
    server (SIGKILL included).

Wire format with the daemon (a private socketpair, both ends trusted): length-prefixed
pickles. Request ``(req_id, CreateRequest)``; reply ``(req_id, pid | None, error | None,
stamps)``. Requests are handled concurrently: each PID 1 reports on its own pipe, watched
by select, and the reply goes out as soon as it says ready.
The fork server exits when the daemon's end closes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Preloaded for the sandbox: nothing is imported after pivot_root.
import runner.files
import runner.init
import runner.output
import runner.plain
import runner.protocol
import runner.server
import runner.shell
from sandkasten.runtime.base import SessionSpec
from sandkasten.runtime.linux import cgjoin, mounts, seccomp, state, threaddrop, userns
from sandkasten.runtime.linux import namespaces as ns
from sandkasten.runtime.linux import plan as pl
from sandkasten.runtime.linux.wire import CreateRequest, Stamps, recv_obj, send_obj

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class _Pending:
    req_id: int
    child: int  # PID 1 of the sandbox (its host pid)
    error: str | None = None
    ready: bool = False
    buf: bytes = field(default=b"")
    stamps: Stamps = field(default_factory=list)


def runner_env(spec: SessionSpec, hostname: str) -> dict[str, str]:
    """The environment of user commands: the image's Env, then the sandbox user's basics."""
    env: dict[str, str] = {}
    for item in spec.image_env:
        k, sep, v = item.partition("=")
        if sep and k:
            env[k] = v
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(HOME="/workspace", USER=pl.SANDBOX_USER, LOGNAME=pl.SANDBOX_USER,
               HOSTNAME=hostname)
    env.setdefault("LANG", "C.UTF-8")
    return env


class _Hardening:
    """Runs in the runner thread that spawns a user process, right before ``posix_spawn``:
    drop every privilege of that thread (only that thread: PID 1 keeps root), then load
    the seccomp filter on it (per thread: prctl, no TSYNC). The child inherits both."""

    def __init__(self, flt: seccomp.PreparedFilter) -> None:
        self.flt = flt

    def __call__(self) -> None:
        threaddrop.drop_thread_privileges(pl.SANDBOX_UID, pl.SANDBOX_GID)
        self.flt.load()


def _pid1(req: CreateRequest, ops: list[pl.Op], report: int, tasks: list[str],
          flt: seccomp.PreparedFilter, stamps: Stamps, userns_fd: int | None = None) -> None:
    """PID 1 of a new sandbox, right after the fork (see the module docstring). Never returns.

    ``ops`` (the plan after ForkPid1) and ``tasks`` (see ``cgjoin``) were computed by the
    fork server before the fork: Python work after a fork copies every page it touches.
    """
    stamps.append(("pid1", time.perf_counter_ns()))
    try:
        old_wakeup = signal.set_wakeup_fd(-1)
        if old_wakeup >= 0:
            os.close(old_wakeup)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        ctx = mounts.Context(
            join_cgroup=(lambda _name: cgjoin.join_self(req.cgroup, tasks))
            if req.cgroup else None, userns_fd=userns_fd)
        mounts.execute(ops, ctx, stamps)
        ctx.close()
        assert ctx.listener is not None
        spec = req.spec
        cfg = runner.server.RunnerConfig(
            env=runner_env(spec, pl.hostname_for(spec.id)), uid=pl.SANDBOX_UID,
            gid=pl.SANDBOX_GID, workdir="/workspace", shell_prefer=list(spec.shell_prefer),
            exec_mode=spec.exec_mode, stage_dir="/tmp", setup=_Hardening(flt))
    except BaseException as e:
        _report(report, {"error": str(e)})
        os._exit(1)

    def ready() -> None:
        stamps.append(("ready", time.perf_counter_ns()))
        _report(report, {"ready": True, "t": stamps})
        os.close(report)

    runner.server.serve_pid1(ctx.listener, cfg, ready)
    os._exit(0)


def _report(fd: int, msg: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(msg).encode() + b"\n")


class ForkServer:
    def __init__(self, control: socket.socket, wakeup: int) -> None:
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.control = control
        self.wakeup = wakeup  # readable when SIGCHLD arrived
        self.pending: dict[int, _Pending] = {}  # report pipe fd -> state
        self.filters: dict[str, seccomp.PreparedFilter] = {}
        # the sandboxes' user namespace (``userns``), made once at start-up, or None
        self.userns_fd: int | None = None
        self.userns_base: int | None = None

    def _filter(self, profile: str) -> seccomp.PreparedFilter:
        if profile not in self.filters:
            self.filters[profile] = seccomp.prepare(profile)  # type: ignore[arg-type]
        return self.filters[profile]

    def start(self, req_id: int, req: CreateRequest) -> None:
        try:
            flt = self._filter(req.spec.seccomp)
        except Exception as e:
            send_obj(self.control, (req_id, None, f"seccomp profile {req.spec.seccomp}: {e}", []))
            return
        try:
            ops = pl.plan_session(req.spec, pl.SessionPaths(Path(req.session_dir)),
                                  req.cgroup.name if req.cgroup else None,
                                  userns_base=self.userns_base)
            assert ops[0] == pl.ForkPid1()
            tasks = cgjoin.v1_task_files(req.cgroup)
        except Exception as e:
            send_obj(self.control, (req_id, None, f"plan: {e}", []))
            return
        t_fork = time.perf_counter_ns()
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            # The next child is PID 1 of a new pid namespace; then straight back to our
            # own, so that no later child lands there.
            ns.unshare(ns.CLONE_NEWPID)
            try:
                child = os.fork()
            except BaseException:
                self._restore_pidns()
                raise
        except OSError as e:
            os.close(r)
            os.close(w)
            send_obj(self.control, (req_id, None, f"fork of PID 1: {e}", []))
            return
        if child != 0:
            self._restore_pidns()
        else:
            os.close(r)
            os.close(self.wakeup)
            os.close(self.own_pidns)  # a host namespace fd never enters a sandbox
            self.control.close()
            for fd in self.pending:
                os.close(fd)
            gc.disable()  # until the runner serves: a collection would only copy pages
            _pid1(req, ops[1:], w, tasks, flt, [("forkserver", t_fork)], self.userns_fd)
        os.close(w)
        try:
            # while PID 1 sets up: a restarted daemon finds the sandbox by this file
            state.write_state(str(pl.SessionPaths(Path(req.session_dir)).state), req.spec.id,
                              child, req.cgroup.name if req.cgroup else None,
                              req.cgroup.paths() if req.cgroup else None)
        except OSError as e:
            os.close(r)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)  # ``reap`` collects it
            send_obj(self.control, (req_id, None, f"state.json: {e}", []))
            return
        self.pending[r] = _Pending(req_id, child)

    def _restore_pidns(self) -> None:
        try:
            ns.setns(self.own_pidns, ns.CLONE_NEWPID)
        except OSError:
            # every later child would share a sandbox's pid namespace: stop serving (the
            # daemon starts a fresh fork server on its next create)
            os._exit(70)

    def on_report(self, fd: int) -> None:
        """A line from a PID 1 in setup: ready (reply at once) or an error; EOF ends it."""
        st = self.pending[fd]
        data = os.read(fd, 65536)
        st.buf += data
        *lines, st.buf = st.buf.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if "ready" in msg:
                st.ready = True
            st.stamps += [(str(k), int(v)) for k, v in msg.get("t", ())]
            if "error" in msg and st.error is None:
                st.error = str(msg["error"])
        if st.ready and not st.error:
            del self.pending[fd]
            os.close(fd)
            st.stamps.append(("reported", time.perf_counter_ns()))
            send_obj(self.control, (st.req_id, st.child, None,
                                    sorted(st.stamps, key=lambda s: s[1])))
            return
        if data and st.error is None:
            return
        # PID 1 failed or died during setup: make sure it is gone (``reap`` collects it)
        del self.pending[fd]
        os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(st.child, signal.SIGKILL)
        send_obj(self.control, (st.req_id, None, st.error or "sandbox setup ended early", []))

    def reap(self) -> None:
        """Collect exited sandboxes: as a child subreaper, their PID 1s are our orphans."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wakeup, 512):
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def serve(self) -> None:
        while True:
            watched: list[Any] = [self.control, self.wakeup, *self.pending]
            try:
                rl: list[Any] = select.select(watched, [], [])[0]
            except InterruptedError:
                continue
            for fd in rl:
                if fd == self.wakeup:
                    self.reap()
                elif fd is self.control:
                    msg = recv_obj(self.control)
                    if msg is None:
                        return  # the daemon is gone; sandboxes live on
                    assert isinstance(msg, tuple)
                    req_id, req = msg
                    self.start(req_id, req)
                else:
                    self.on_report(fd)


def _setup_userns(options: dict[str, Any]) -> tuple[int | None, int | None, dict[str, Any]]:
    """The sandboxes' user namespace per ``options`` (``security.user_namespace``,
    ``userns_base``, ``data_dir``): (fd, base, status for the hello message). The status
    has ``active`` and, when the namespace is not used, ``reason``; ``fatal`` when the
    mode is ``on`` and it cannot be used."""
    mode = str(options.get("user_namespace", "off"))
    base = int(options.get("userns_base", userns.DEFAULT_BASE))
    fd, reason = userns.setup(mode, base, str(options.get("data_dir", "/")))
    if fd is not None:
        return fd, base, {"mode": mode, "active": True, "base": base}
    status: dict[str, Any] = {"mode": mode, "active": False, "reason": reason or "off"}
    if mode == "on":
        status["fatal"] = True
    return None, None, status


def main() -> None:
    fd = int(sys.argv[1])
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    control = socket.socket(fileno=fd)
    # Die with the daemon; ignore terminal signals meant for it.
    ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Sandboxes' PID 1s are re-parented to us (not to whatever the host's init is, which
    # may not reap), so their exit is collected at once and destroy never waits on a
    # zombie. If we die they move on to the next subreaper or init, still alive.
    ns.prctl(ns.PR_SET_CHILD_SUBREAPER, 1)
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # once, before any sandbox exists (the probe forks and mounts in a throwaway child)
    userns_fd, userns_base, userns_status = _setup_userns(options)
    # Preloaded objects never change again: keep the collector from touching (and so
    # copying) their pages in every forked sandbox.
    gc.collect()
    gc.freeze()
    send_obj(control, ("hello", os.getpid(), userns_status))
    if userns_status.get("fatal"):
        return
    server = ForkServer(control, r)
    server.userns_fd, server.userns_base = userns_fd, userns_base
    server.serve()


if __name__ == "__main__":
    main()
