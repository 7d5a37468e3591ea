"""The Linux driver: ``LinuxRuntime`` implements ``sandkasten.runtime.base.Runtime``.

    rt = LinuxRuntime(data_dir)                 # starts the fork server (once)
    sb = await rt.create(spec)                  # a fork, namespaces, overlay, PID 1 runner
    await sb.exec("echo hi"); await sb.destroy()
    sb = await rt.attach(session_id)            # after a daemon restart
    await rt.cleanup(session_id)                # what a dead sandbox left behind

State on disk: sessions/<id>/{upper,work,merged,workspace,runner.sock,state.json}, and
lower/<i> (empty mount points for idmapped layers) with the user namespace. Every
mount lives in the sandbox's own mount namespace, so none ever appears on the host and
they all vanish with the sandbox's last process; destroy kills the processes (cgroup kill,
else the PID 1, which takes its pid namespace down), removes the cgroup and the directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any, Literal

from sandkasten.errors import SandkastenError
from sandkasten.runtime.base import SessionSpec, Stats
from sandkasten.runtime.linux import plan as pl
from sandkasten.runtime.linux import userns
from sandkasten.runtime.linux.cgroups import Cgroup, CgroupLimits, CgroupManager, open_manager
from sandkasten.runtime.linux.errors import SessionSetupError
from sandkasten.runtime.linux.sandbox import LinuxSandbox
from sandkasten.runtime.linux.state import proc_start_time
from sandkasten.runtime.linux.wire import CreateRequest, Job, Stamps, make_job, recv_obj, send_obj

__all__ = ["LinuxRuntime", "LinuxSandbox", "proc_start_time"]

log = logging.getLogger("sandkasten")
UserNamespaceMode = Literal["auto", "on", "off"]
_ID_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class SessionExistsError(SandkastenError):
    code = "session_exists"
    status = 409


class ForkServerClient:
    """The daemon's handle on the fork server process: thread-safe, any event loop."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        """``options``: the fork server's start-up settings (``user_namespace``,
        ``userns_base``, ``data_dir``), as JSON on its command line."""
        ours, theirs = socket.socketpair()
        # A minimal environment: it is the initial environment of every sandbox's PID 1,
        # and the daemon's own (API keys, tokens) must never be in a sandbox's memory.
        root = str(Path(__file__).resolve().parents[3])
        # this project, then the installed libraries (pyseccomp), without site's .pth hooks
        libs = dict.fromkeys([root, sysconfig.get_paths()["purelib"],
                              sysconfig.get_paths()["platlib"]])
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "PYTHONPATH": ":".join(libs)}
        self.proc = subprocess.Popen(
            # -S: no site-packages, .pth hooks or sitecustomize; the fork server needs the
            # standard library and this project only, and every module it holds is memory
            # in each sandbox's PID 1
            [sys.executable, "-S", "-m", "sandkasten.runtime.linux.forkserver",
             str(theirs.fileno()), json.dumps(options or {})],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.sock = ours
        hello = recv_obj(ours)
        if not (isinstance(hello, tuple) and hello[0] == "hello"):
            self.close()
            raise SessionSetupError("the sandbox fork server did not start")
        # {"mode", "active", "base"} or {"mode", "active": False, "reason"[, "fatal"]}
        self.userns: dict[str, Any] = dict(hello[2]) if len(hello) > 2 else {"active": False}
        if self.userns.get("fatal"):
            self.close()
            raise SessionSetupError(
                f"security.user_namespace is on, but {self.userns.get('reason')}",
                hint="fix the kernel or filesystem support named above, or set "
                     "security.user_namespace: auto (runs without one where it cannot)")
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._futures: dict[int, concurrent.futures.Future[tuple[int, Stamps]]] = {}
        self._reader = threading.Thread(target=self._read, name="forkserver-reader",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                msg = recv_obj(self.sock)
            except OSError:
                msg = None
            if msg is None:
                with self._lock:
                    futs, self._futures = self._futures, {}
                for f in futs.values():
                    f.set_exception(SessionSetupError("the sandbox fork server exited"))
                return
            assert isinstance(msg, tuple)
            req_id, pid, error, stamps = msg
            with self._lock:
                fut = self._futures.pop(req_id, None)
            if fut is None:
                continue
            if error is not None:
                fut.set_exception(SessionSetupError(f"sandbox setup failed: {error}"))
            else:
                fut.set_result((pid, stamps))

    def create(self, job: Job) -> concurrent.futures.Future[tuple[int, Stamps]]:
        """Ask for a sandbox; the future holds PID 1's host pid and the setup's stamps."""
        fut: concurrent.futures.Future[tuple[int, Stamps]] = concurrent.futures.Future()
        with self._lock:
            req_id = next(self._ids)
            self._futures[req_id] = fut
            send_obj(self.sock, (req_id, job))
        return fut

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LinuxRuntime:
    """Sandboxes on this Linux host (root required). Thread- and loop-safe."""

    def __init__(self, data_dir: Path, *, store: Any = None, allow_unlimited: bool = False,
                 cgroup_root: Path = Path("/sys/fs/cgroup"),
                 cgroup_parent: str = "sandkasten",
                 user_namespace: UserNamespaceMode = "auto",
                 userns_base: int = userns.DEFAULT_BASE) -> None:
        """``user_namespace``/``userns_base``: see ``security`` in docs/configuration.md;
        with ``on``, ``start`` (and any create) raises SessionSetupError where the kernel
        or the data directory's filesystem cannot do it."""
        self.data_dir = Path(data_dir)
        self.user_namespace = user_namespace
        self.userns_base = userns_base
        self._userns_logged = False
        self.sessions_dir = self.data_dir / "sessions"
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.cgroups: CgroupManager = open_manager(cgroup_root, cgroup_parent,
                                                   allow_unlimited=allow_unlimited)
        self._forkserver: ForkServerClient | None = None
        self._fs_lock = threading.Lock()

    def _fs(self) -> ForkServerClient:
        with self._fs_lock:
            if self._forkserver is None or self._forkserver.proc.poll() is not None:
                self._forkserver = ForkServerClient({
                    "user_namespace": self.user_namespace, "userns_base": self.userns_base,
                    "data_dir": str(self.data_dir)})
                self._log_userns(self._forkserver.userns)
            return self._forkserver

    def _log_userns(self, status: dict[str, Any]) -> None:
        if self._userns_logged:
            return
        self._userns_logged = True
        if status.get("active"):
            log.debug("user namespace active: sandbox ids 0..%d are host ids %d..%d",
                     userns.SIZE - 1, status["base"], status["base"] + userns.SIZE - 1)
        elif self.user_namespace == "auto":
            log.warning("running sandboxes without a user namespace: %s "
                        "(root in a sandbox is host root, without capabilities)",
                        status.get("reason"))

    def user_namespace_status(self) -> dict[str, Any]:
        """Whether sandboxes run in the user namespace: ``{"mode", "active", "base"}`` or,
        without one, ``{"mode", "active": False, "reason"}``. Starts the fork server."""
        return dict(self._fs().userns)

    def start(self) -> None:
        """Start the fork server now (call before the process starts threads if you like;
        it is a fresh interpreter either way, so it is also safe later)."""
        self._fs()

    def close(self) -> None:
        """Stop the fork server. Live sandboxes keep running (``attach`` finds them)."""
        with self._fs_lock:
            if self._forkserver is not None:
                self._forkserver.close()
                self._forkserver = None

    # --- paths and state ------------------------------------------------------------------

    def paths(self, session_id: str) -> pl.SessionPaths:
        if not session_id or not set(session_id) <= _ID_OK or session_id.startswith("."):
            raise SessionSetupError(f"invalid session id {session_id!r}")
        return pl.SessionPaths(self.sessions_dir / session_id)

    @staticmethod
    def cgroup_name(session_id: str) -> str:
        return f"sk-{session_id}"

    def _read_state(self, session_id: str) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.paths(session_id).state.read_text())
            return state
        except (OSError, ValueError):
            return None

    def _open_cgroup(self, session_id: str, state: dict[str, Any] | None) -> Cgroup | None:
        """The session's cgroup where its state recorded it (a daemon restarted in another
        cgroup has a different parent), else by name under this runtime's parent."""
        name = (state or {}).get("cgroup") or self.cgroup_name(session_id)
        paths = (state or {}).get("cgroup_paths")
        if isinstance(paths, dict) and paths:
            return self.cgroups.open_paths(name, {str(k): str(v) for k, v in paths.items()})
        return self.cgroups.open(name)

    def _alive(self, state: dict[str, Any] | None) -> bool:
        return state is not None and proc_start_time(state["pid"]) == state.get("start_time")

    # --- create ---------------------------------------------------------------------------

    async def create(self, spec: SessionSpec) -> LinuxSandbox:
        return await asyncio.wrap_future(self._create_future(spec))

    def _create_future(self, spec: SessionSpec) -> concurrent.futures.Future[LinuxSandbox]:
        out: concurrent.futures.Future[LinuxSandbox] = concurrent.futures.Future()
        t_request = time.perf_counter_ns()
        try:
            paths, cg = self._prepare(spec)
        except BaseException as e:
            out.set_exception(e)
            return out
        try:
            fs = self._fs()
            job = make_job(CreateRequest(spec, str(paths.root), cg),
                           fs.userns["base"] if fs.userns.get("active") else None)
            fut = fs.create(job)
        except BaseException as e:
            self._teardown(spec.id, None, cg)
            out.set_exception(e if isinstance(e, SandkastenError)
                              else SessionSetupError(str(e)))
            return out

        def done(f: concurrent.futures.Future[tuple[int, Stamps]]) -> None:
            try:
                pid, stamps = f.result()  # the fork server wrote state.json
                sb = LinuxSandbox(self, spec.id, pid, str(paths.socket), cg)
                sb.setup_stamps = [("request", t_request), *stamps]
                out.set_result(sb)
            except BaseException as e:
                self._teardown(spec.id, None, cg)
                out.set_exception(e)

        fut.add_done_callback(done)
        return out

    def _prepare(self, spec: SessionSpec) -> tuple[pl.SessionPaths, Cgroup | None]:
        paths = self.paths(spec.id)
        pl.overlay_options(spec.layer_paths, paths.upper, paths.work)  # validate early
        try:
            paths.root.mkdir(mode=0o700)
        except FileExistsError:
            raise SessionExistsError(f"session {spec.id} already exists") from None
        try:
            for d in (paths.upper, paths.work, paths.merged):
                d.mkdir()
            if spec.workspace_dir is None:
                paths.workspace.mkdir()
                os.chown(paths.workspace, pl.SANDBOX_UID, pl.SANDBOX_GID)
            else:
                spec.workspace_dir.mkdir(parents=True, exist_ok=True)
                st = spec.workspace_dir.stat()
                if st.st_uid == 0:
                    os.chown(spec.workspace_dir, pl.SANDBOX_UID, pl.SANDBOX_GID)
            limits = CgroupLimits(
                cpu=spec.cpu_limit,
                memory_bytes=spec.mem_limit_mb << 20 if spec.mem_limit_mb else None,
                pids=spec.pids_limit)
            cg = self.cgroups.create(self.cgroup_name(spec.id), limits) \
                if self.cgroups.controllers else None
        except BaseException:
            shutil.rmtree(paths.root, ignore_errors=True)
            raise
        return paths, cg

    # --- attach / destroy / cleanup -------------------------------------------------------

    async def attach(self, session_id: str) -> LinuxSandbox | None:
        state = self._read_state(session_id)
        if not self._alive(state):
            return None
        assert state is not None
        cg = self._open_cgroup(session_id, state) if state.get("cgroup") else None
        sb = LinuxSandbox(self, session_id, state["pid"],
                          str(self.paths(session_id).socket), cg)
        try:
            await sb.ping()
        except SandkastenError:
            return None
        return sb

    async def cleanup(self, session_id: str) -> None:
        await asyncio.to_thread(self.destroy_sync, session_id)

    def destroy_sync(self, session_id: str) -> None:
        """Kill every process, remove the cgroup and the session directory. Idempotent."""
        state = self._read_state(session_id)
        cg = self._open_cgroup(session_id, state)
        pid = state["pid"] if state and self._alive(state) else None
        self._teardown(session_id, pid, cg)

    def _teardown(self, session_id: str, pid: int | None, cg: Cgroup | None) -> None:
        if cg is not None:
            with contextlib.suppress(Exception):
                cg.kill_all()
        if pid is not None:
            # PID 1's death takes the whole pid namespace (and with it the mount namespace)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            start = proc_start_time(pid)
            while start is not None and proc_start_time(pid) == start \
                    and time.monotonic() < deadline:
                time.sleep(0.002)
        if cg is not None:
            cg.remove()
        shutil.rmtree(self.paths(session_id).root, ignore_errors=True)

    def stats_of(self, sb: LinuxSandbox) -> Stats:
        cg = sb._cgroup
        if not isinstance(cg, Cgroup):
            return Stats(memory_bytes=0, memory_limit=None, cpu_usage_usec=0, pids=0)
        s = cg.stats()
        return Stats(memory_bytes=s.memory_bytes, memory_limit=s.memory_limit,
                     cpu_usage_usec=s.cpu_usage_usec, pids=s.pids, oom_kills=s.oom_kills)

    def list_sessions(self) -> list[str]:
        """Session ids with a directory on disk (live or not)."""
        return sorted(p.name for p in self.sessions_dir.iterdir() if p.is_dir())
