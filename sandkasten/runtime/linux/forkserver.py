"""The fork server: a single-threaded process, the runner preloaded, that forks sandboxes.

Why: the daemon is multi-threaded (uvicorn, asyncio executors), and forking it is unsafe;
a Python start-up per session costs tens of milliseconds. The fork server is started once
(``python -m sandkasten.runtime.linux.forkserver``), imports every module a sandbox needs,
and then only forks. Creating a session:

    fork server: unshare(CLONE_NEWPID), fork, setns back to its own pid namespace
        └─▶ PID 1 of the new pid namespace: setsid, stdio → /dev/null, unshare (uts ipc
            net), lo up (``plan.spare_plan``); then it waits for its session's part of
            the plan (``plan.plan_session`` after ``Assign``, planned and pickled by the
            daemon: ``wire.Job``): join the cgroup (so every process of the sandbox
            starts in it), unshare mnt (a copy of the host's mounts as they are now) and
            cgroup, make "/" private, bind sessions/<id>/runner.sock (a host path, so a
            restarted daemon can reconnect), hostname, overlay, pivot_root, /proc /dev
            /tmp /workspace, /etc files; reports ready; non-dumpable; serves.
    The fork server keeps one such PID 1 forked ahead (the spare), so a create starts at
    its assignment; it forks the next one when a sandbox's first request arrives (the
    creator then waits on the sandbox's own work, and a core is free) or after a moment
    without events. A spare copies ahead the pages a sandbox's start writes
    (``pretouch``, learned from the first sandboxes), so their copy-on-write faults are
    off the create path too. Without a spare (a burst of creates) PID 1 is forked on
    demand and does the same steps.
    The fork server is a child subreaper and PID 1's parent; if it dies, PID 1 moves on to
    the next subreaper or the host's init: a sandbox outlives the daemon and the fork
    server (SIGKILL included). A spare that has no session yet exits with the fork server.

Wire format with the daemon (a private socketpair, both ends trusted): length-prefixed
pickles. Request ``(req_id, Job)``; reply ``(req_id, pid | None, error | None, stamps)``.
Requests are handled concurrently: each PID 1 reports on its own pipe, watched by select,
and the reply goes out as soon as it says ready.
The fork server exits when the daemon's end closes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
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
from sandkasten.runtime.linux import (
    cgjoin,
    mounts,
    pretouch,
    seccomp,
    state,
    threaddrop,
    userns,
)
from sandkasten.runtime.linux import namespaces as ns
from sandkasten.runtime.linux import plan as pl
from sandkasten.runtime.linux.wire import CreateRequest, Job, Stamps, recv_obj, send_obj

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The seccomp programs, compiled once at start-up (before any fork: every PID 1 has them)
_FILTERS: dict[str, seccomp.PreparedFilter | Exception] = {}
# Without a spare, one is forked when a sandbox's first request arrives or after this much
# time without any event (seconds); after this many spares died before their request,
# creates fork on demand only.
SPARE_IDLE = 0.05
SPARE_FAILURES_MAX = 3
LEARN_SAMPLES = 2  # sandboxes whose written pages a spare copies ahead (``pretouch``)
STARTED_MAX = 32  # ready PID 1s watched until their first request (``on_started``)


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


def _pid1_main(assign: int, report: int, stamps: Stamps, hot: list[int] | None,
               userns_fd: int | None) -> None:
    """PID 1 of a new sandbox, right after the fork (see the module docstring). Never returns.

    First the session-independent setup (``plan.spare_plan``) and, in a spare, the
    copy-on-write warm-up of the ``hot`` pages (``pretouch``); then it waits for its session
    on ``assign``: the fork server writes the daemon's ``wire.Job.assignment`` there and
    closes it. A spare that reads EOF instead (the fork server is gone) just exits.

    The report pipe carries "ready" (with the setup's stamps) or an error, then "first"
    when the first request arrives, and is closed after that request's reply.
    """
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
        mounts.execute(pl.spare_plan(), mounts.Context())
        if hot:
            pretouch.touch(hot, assign)
    except BaseException as e:
        _report(report, {"error": f"sandbox setup: {e}"})
        os._exit(1)
    chunks = []
    while chunk := os.read(assign, 1 << 16):
        chunks.append(chunk)
    os.close(assign)
    if not chunks:
        os._exit(0)  # a spare whose fork server is gone
    if hot is not None:  # the fork server did this already; a sandbox never runs idle-class
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    data = b"".join(chunks)
    req, ops, tasks = pickle.loads(data)  # noqa: S301 - from our parent
    _pid1(req, ops, report, tasks, stamps, userns_fd)


def _pid1(req: CreateRequest, ops: list[pl.Op], report: int, tasks: list[str],
          stamps: Stamps, userns_fd: int | None) -> None:
    stamps.append(("pid1", time.perf_counter_ns()))
    try:
        flt = _FILTERS.get(req.spec.seccomp)
        if not isinstance(flt, seccomp.PreparedFilter):
            raise ValueError(f"seccomp profile {req.spec.seccomp}: {flt or 'unknown'}")

        first = _FirstRequest(report)
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
            exec_mode=spec.exec_mode, stage_dir="/tmp", setup=_Hardening(flt),
            first_request_started=first.started, first_request_done=first.done)
    except BaseException as e:
        _report(report, {"error": str(e)})
        os._exit(1)

    def ready() -> None:
        stamps.append(("ready", time.perf_counter_ns()))
        _report(report, {"ready": True, "t": stamps})

    runner.server.serve_pid1(ctx.listener, cfg, ready)
    os._exit(0)


class _FirstRequest:
    """The report pipe after "ready": "first" when the first request arrives, closed after
    its reply. Requests on two connections may run at once: the lock keeps a write from
    ever reaching the fd number after it was closed (and perhaps reused)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def started(self) -> None:
        with self.lock:
            if self.fd >= 0:
                _report(self.fd, {"first": True})

    def done(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def _report(fd: int, msg: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(msg).encode() + b"\n")


@dataclass
class _Child:
    """A forked PID 1 that has not been told its session yet."""

    pid: int
    assign: int  # write end: the session's request, then closed
    report: int  # read end of its report pipe


class ForkServer:
    def __init__(self, control: socket.socket, wakeup: int) -> None:
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.control = control
        self.wakeup = wakeup  # readable when SIGCHLD arrived
        self.pending: dict[int, _Pending] = {}  # report pipe fd -> state
        self.spare: _Child | None = None
        self.spare_failures = 0
        # ``pretouch``: the pages a sandbox's start writes, learned from the first ones
        self.hot: list[int] = []
        self.learned = 0
        # PID 1s that are ready, until their first request is answered: report fd -> pid
        self.started: dict[int, int] = {}
        # the sandboxes' user namespace (``userns``), made once at start-up, or None
        self.userns_fd: int | None = None

    def _fork_pid1(self, spare: bool = False) -> _Child:
        """Fork a PID 1 in a new pid namespace; it does the session-independent setup (a
        ``spare`` also its page warm-up) and waits for its request. OSError if it cannot
        be forked."""
        assign_r, assign_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        try:
            # The next child is PID 1 of a new pid namespace; then straight back to our
            # own, so that no later child lands there.
            ns.unshare(ns.CLONE_NEWPID)
            try:
                child = os.fork()
            except BaseException:
                self._restore_pidns()
                raise
        except OSError:
            for fd in (assign_r, assign_w, report_r, report_w):
                os.close(fd)
            raise
        if child == 0:
            for fd in (assign_w, report_r, self.wakeup, self.own_pidns, *self.pending,
                       *self.started,
                       *((self.spare.assign, self.spare.report) if self.spare else ())):
                os.close(fd)  # a host namespace fd never enters a sandbox
            self.control.close()
            gc.disable()  # until the runner serves: a collection would only copy pages
            _pid1_main(assign_r, report_w, [], self.hot if spare else None,
                       self.userns_fd)
        self._restore_pidns()
        if spare:
            # A spare takes only CPU time nobody else wants until it is assigned (``start``
            # gives it the normal class back): its warm-up never slows a running sandbox.
            with contextlib.suppress(OSError):
                os.sched_setscheduler(child, os.SCHED_IDLE, os.sched_param(0))
        os.close(assign_r)
        os.close(report_w)
        return _Child(child, assign_w, report_r)

    def _discard(self, child: _Child, *, reaped: bool = False) -> None:
        with contextlib.suppress(OSError):
            os.close(child.assign)
        os.close(child.report)
        if not reaped:  # a reaped pid may already be someone else's
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)  # ``reap`` collects it

    def start(self, req_id: int, job: Job) -> None:
        stamps: Stamps = [("forkserver", time.perf_counter_ns())]
        child, self.spare = self.spare, None
        for _ in range(2):  # a spare that died meanwhile is replaced by a fresh fork
            if child is None:
                try:
                    child = self._fork_pid1()
                except OSError as e:
                    send_obj(self.control, (req_id, None, f"fork of PID 1: {e}", []))
                    return
            try:
                with contextlib.suppress(OSError):  # a spare: see ``_pid1_main``
                    os.sched_setscheduler(child.pid, os.SCHED_OTHER, os.sched_param(0))
                _write_all(child.assign, job.assignment)
                os.close(child.assign)
                self.spare_failures = 0
                break
            except OSError:
                self._discard(child)
                child = None
        if child is None:
            send_obj(self.control, (req_id, None, "PID 1 ended before its setup", []))
            return
        try:
            # while PID 1 sets up: a restarted daemon finds the sandbox by this file
            state.write_state(job.state_path, job.spec_id, child.pid, job.cgroup,
                              job.cgroup_paths)
        except OSError as e:
            os.close(child.report)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)  # ``reap`` collects it
            send_obj(self.control, (req_id, None, f"state.json: {e}", []))
            return
        self.pending[child.report] = _Pending(req_id, child.pid, stamps=stamps)

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
            st.stamps.append(("reported", time.perf_counter_ns()))
            send_obj(self.control, (st.req_id, st.child, None,
                                    sorted(st.stamps, key=lambda s: s[1])))
            if len(self.started) < STARTED_MAX:
                self.started[fd] = st.child  # see ``on_started``
            else:
                # sandboxes that never get a request (a filled pool, say) must not pile up
                # fds here: the idle timer forks the next spare instead; PID 1's later
                # writes to the closed pipe fail quietly
                os.close(fd)
            return
        if data and st.error is None:
            return
        # PID 1 failed or died during setup: make sure it is gone (``reap`` collects it)
        del self.pending[fd]
        os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(st.child, signal.SIGKILL)
        send_obj(self.control, (st.req_id, None, st.error or "sandbox setup ended early", []))

    def on_started(self, fd: int) -> None:
        """A ready PID 1's first request arrived ("first"), or was answered (EOF).

        Its creator now waits on the sandbox's own work (the command runs): the moment to
        fork the next spare, on the core that is free. After the reply, the first few
        PID 1s teach the spares which pages a sandbox's start writes (``pretouch``).
        """
        eof = not os.read(fd, 512)
        self._fork_spare()
        if not eof:
            return
        pid = self.started.pop(fd)
        os.close(fd)
        if self.learned < LEARN_SAMPLES:
            try:
                found = pretouch.learn(pid, pretouch.own_ranges())
            except OSError:
                found = set()
            if found:  # else it ended meanwhile, or there is no pagemap: the next teaches
                self.hot = sorted(found.union(self.hot))
                self.learned += 1

    def _fork_spare(self) -> None:
        if self.spare is None and self.spare_failures < SPARE_FAILURES_MAX:
            try:
                self.spare = self._fork_pid1(spare=True)
            except OSError:
                self.spare_failures += 1

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
            if self.spare is not None and pid == self.spare.pid:
                # A spare that died before its request: the next create forks (and reports
                # why, should its setup fail the same way). If it was warming up, stop
                # warming up; spares stop after SPARE_FAILURES_MAX deaths in a row.
                self._discard(self.spare, reaped=True)
                self.spare = None
                if self.hot:
                    self.hot, self.learned = [], LEARN_SAMPLES
                else:
                    self.spare_failures += 1

    def serve(self) -> None:
        while True:
            watched: list[Any] = [self.control, self.wakeup, *self.pending, *self.started]
            # The next spare is forked when a sandbox's first request arrives
            # (``on_started``), or after a moment without any event.
            timeout = SPARE_IDLE if self.spare is None and not self.pending else None
            try:
                rl: list[Any] = select.select(watched, [], [], timeout)[0]
            except InterruptedError:
                continue
            if not rl:
                self._fork_spare()
            for fd in rl:
                if fd == self.wakeup:
                    self.reap()
                elif fd is self.control:
                    msg = recv_obj(self.control)
                    if msg is None:
                        if self.spare is not None:
                            self._discard(self.spare)
                        return  # the daemon is gone; sandboxes live on
                    assert isinstance(msg, tuple)
                    req_id, job = msg
                    self.start(req_id, job)
                elif fd in self.started:
                    self.on_started(fd)
                else:
                    self.on_report(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
    for profile in ("off", "mvp", "strict"):
        try:
            _FILTERS[profile] = seccomp.prepare(profile)
        except Exception as e:  # reported to the creates that ask for this profile
            _FILTERS[profile] = e
    # once, before any sandbox exists (the probe forks and mounts in a throwaway child)
    userns_fd, _, userns_status = _setup_userns(options)
    # Preloaded objects never change again: keep the collector from touching (and so
    # copying) their pages in every forked sandbox.
    gc.collect()
    gc.freeze()
    send_obj(control, ("hello", os.getpid(), userns_status))
    if userns_status.get("fatal"):
        return
    server = ForkServer(control, r)
    server.userns_fd = userns_fd  # the base went out with hello: the daemon plans with it
    server.serve()


if __name__ == "__main__":
    main()
