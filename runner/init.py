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
import os
import signal
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
    """How to start one child process (see ``spawn``)."""

    argv: Sequence[str]
    env: dict[str, str]
    cwd: str
    stdin: int
    stdout: int
    stderr: int
    ctty: int | None = None  # make this fd the controlling terminal (a PTY slave)
    fd3: int | None = None  # passed to the child as fd 3


_CLONE_FS = 0x00000200


def _inheritable_fds() -> list[int]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                out.append(int(name))
        except OSError:
            pass  # the directory's own fd, closed by now
    return out
_SPAWN_SIGDEF = frozenset(_RESET_IGNORED) | HANDLED


def spawn(spec: ChildSpec, setup: Callable[[], None] | None) -> int:
    """Start ``spec`` as a new session (setsid) and return its pid; OSError if it cannot.

    No fork of this (Python, multi-threaded) process: a fresh thread gives itself a private
    cwd (``unshare(CLONE_FS)``), runs ``setup``, which must drop *that thread's*
    privileges and load its seccomp filter (``threaddrop``; never a process-wide change),
    changes into ``spec.cwd`` (as the dropped user: "/" if that is not allowed) and calls
    ``posix_spawn``, whose child inherits the thread's credentials and filter and runs no
    Python before execve. The thread then exits. The child gets exactly ``stdin``,
    ``stdout``, ``stderr`` (and ``fd3``): no other fd of this process.
    With ``ctty``, the child opens that terminal by path as a session leader, which makes
    it its controlling terminal.
    """
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = []
    if spec.ctty is not None:
        tty = os.ttyname(spec.ctty)
        for target, src in ((0, spec.stdin), (1, spec.stdout), (2, spec.stderr)):
            if src == spec.ctty:
                actions.append((os.POSIX_SPAWN_OPEN, target, tty, os.O_RDWR, 0))
            else:
                actions.append((os.POSIX_SPAWN_DUP2, src, target))
    else:
        actions += [(os.POSIX_SPAWN_DUP2, src, target)
                    for target, src in ((0, spec.stdin), (1, spec.stdout), (2, spec.stderr))]
    if spec.fd3 is not None:
        actions.append((os.POSIX_SPAWN_DUP2, spec.fd3, 3))
    # Every fd this process opens is close-on-exec; one it inherited without the flag (PID 1
    # has none, a runner on a host may) is closed in the child after the dup2s.
    targets = {0, 1, 2} | ({3} if spec.fd3 is not None else set())
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd not in targets]
    result: list[int | BaseException] = []

    def run() -> None:
        try:
            if _libc.unshare(_CLONE_FS) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")
            if setup is not None:
                setup()
            try:
                os.chdir(spec.cwd)
            except OSError:
                os.chdir("/")
            result.append(os.posix_spawn(
                spec.argv[0], list(spec.argv), spec.env, file_actions=actions, setsid=True,
                setsigmask=(), setsigdef=_SPAWN_SIGDEF))
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    t = threading.Thread(target=run, name="spawn", daemon=True)
    t.start()
    t.join()
    if not result:
        raise OSError(errno.EINVAL, "spawn thread ended without a result")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


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
