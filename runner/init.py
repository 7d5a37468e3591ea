"""PID 1 duties and safe child spawning.

What PID 1 of a sandbox must do, and nothing more:
  1. be non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``), so no process in the sandbox can open
     /proc/1/mem, /proc/1/root, /proc/1/exe or ptrace it (those need CAP_SYS_PTRACE, which
     user commands never have), even if it ran as the same uid;
  2. reap every zombie: orphans of the sandbox are re-parented to PID 1;
  3. on SIGTERM or SIGINT from the host, forward the signal to every other process of the
     namespace, give them a moment, and exit; the kernel then kills whatever is left;
  4. never die of a signal raised inside the sandbox: the signals are blocked and taken with
     ``sigwaitinfo`` in the main thread, and user commands run as another uid, which may not
     signal PID 1 at all.

Child exit statuses are routed through ``Reaper``: PID 1 calls ``waitpid(-1)``, so code that
starts a child registers it (under the reaper's lock, so a fast exit cannot be reaped before
it is registered) and waits on the reaper, never on ``os.waitpid`` itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import termios
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PR_SET_DUMPABLE = 4
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
HANDLED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# Ignored dispositions survive execve: reset every one a parent may have ignored
# (CPython ignores SIGPIPE and SIGXFSZ; the fork server ignores SIGINT).
_RESET_IGNORED = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT,
                  signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN,
                  signal.SIGTTOU, signal.SIGCHLD)


def set_non_dumpable() -> None:
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE): {os.strerror(err)}")


class Reaper:
    """Collects the exit status of every child; waiters get the ones they registered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._watched: dict[int, int | None] = {}  # pid -> wait status (None while running)

    def spawn(self, start: Callable[[], int]) -> int:
        """Run ``start`` (which forks and returns the child pid) and watch that pid."""
        with self._lock:
            pid = start()
            self._watched[pid] = None
            return pid

    def reap(self) -> None:
        """Collect every exited child without blocking (called on SIGCHLD)."""
        with self._cond:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid in self._watched:
                    self._watched[pid] = status
            self._cond.notify_all()

    def wait(self, pid: int, timeout: float | None = None) -> int | None:
        """The exit code of ``pid`` (128+signal if killed), or None on timeout.

        The pid stays watched until its status is returned, so it is never reused under us.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._watched.get(pid, 0) is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            status = self._watched.pop(pid, None)
        if status is None:
            return None
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else 128

    def running(self, pid: int) -> bool:
        with self._lock:
            return pid in self._watched and self._watched[pid] is None


class NotPid1Reaper(Reaper):
    """Outside a sandbox (tests on the host) a background thread reaps instead of PID 1."""

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.005):
            self.reap()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child process; built before the fork, used after it."""

    argv: Sequence[str]
    env: dict[str, str]
    cwd: str
    stdin: int
    stdout: int
    stderr: int
    ctty: int | None = None  # make this fd the controlling terminal (a PTY slave)
    fd3: int | None = None  # passed to the child as fd 3


def fork_exec(spec: ChildSpec, setup: Callable[[], None] | None) -> int:
    """Fork and exec ``spec``; ``setup`` runs in the child right before execve.

    ``setup`` is where privileges are dropped and the seccomp filter is loaded, so it runs
    after every step that still needs root. Failures in the child are reported through a
    close-on-exec pipe and raised here as OSError, so the caller never waits on a child that
    could not start.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    env = [f"{k}={v}".encode() for k, v in spec.env.items()]
    argv = [a.encode() for a in spec.argv]
    pid = os.fork()
    if pid == 0:  # child: no allocation-heavy work, no locks, exec or _exit
        try:
            os.close(r)
            w = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 256)  # out of the way of fds 0-3
            os.setsid()
            if spec.ctty is not None:
                fcntl.ioctl(spec.ctty, termios.TIOCSCTTY, 0)
            for target, src in ((0, spec.stdin), (1, spec.stdout), (2, spec.stderr)):
                os.dup2(src, target, inheritable=True)
            first_free = 3
            if spec.fd3 is not None:
                os.dup2(spec.fd3, 3, inheritable=True)
                first_free = 4
            os.closerange(first_free, w)
            os.closerange(w + 1, 65536)
            for sig in _RESET_IGNORED:
                _libc.signal(sig, 0)  # SIG_DFL
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            if setup is not None:
                setup()
            try:
                os.chdir(spec.cwd)
            except OSError:
                os.chdir("/")
            os.execve(argv[0], argv, dict(e.split(b"=", 1) for e in env))  # noqa: S606
        except BaseException as e:  # report and die; never return into the parent's code
            code = e.errno if isinstance(e, OSError) and e.errno else errno.EINVAL
            try:
                os.write(w, f"{code}:{e}".encode()[:1000])
            finally:
                os._exit(127)
    os.close(w)
    try:
        report = b""
        while chunk := os.read(r, 1024):
            report += chunk
    finally:
        os.close(r)
    if report:
        code_s, _, msg = report.decode(errors="replace").partition(":")
        # the child already exited: the caller's reaper collects it
        raise OSError(int(code_s) if code_s.isdigit() else errno.EINVAL, msg)
    return pid


def serve_signals(reaper: Reaper, on_exit: Callable[[], None]) -> None:
    """The main loop of PID 1: reap on SIGCHLD; forward SIGTERM/SIGINT/SIGHUP and exit.

    The caller has blocked ``HANDLED`` in every thread (``block_signals`` before starting
    any), so the signals queue here instead of killing or interrupting anything.
    """
    while True:
        info = signal.sigwaitinfo(HANDLED)
        if info.si_signo == signal.SIGCHLD:
            reaper.reap()
            continue
        on_exit()
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, info.si_signo)  # every process of the namespace except PID 1
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            reaper.reap()
            try:
                os.kill(-1, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        os._exit(0)


def block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
