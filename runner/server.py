"""The runner's server: requests from the daemon over a Unix socket, one thread each.

Concurrency: every connection gets a thread that handles its requests in order. Execs on
the persistent shell are serialised by the shell's lock (one at a time, as in a terminal);
file requests and stateless execs run alongside them. ``serve_pid1`` is the entry point
inside a sandbox: it must be called after pivot_root with every module already imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import select
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from runner import protocol as p
from runner.files import FileOpError, Files
from runner.init import Reaper, block_signals, serve_signals, set_non_dumpable
from runner.output import clean
from runner.plain import run_plain
from runner.shell import Shell, ShellConfig

_libc = ctypes.CDLL(None)
SWITCH_INTERVAL = 0.0002  # seconds
IDLE_TRIM_MS = 100  # a connection this long without a request counts as idle


def release_free_memory() -> None:
    """Give memory that the allocator holds free back to the kernel (glibc malloc_trim).

    An idle sandbox's PID 1 then keeps only what it uses: the pages freed by a request
    would otherwise stay resident, counted as the session's own memory.
    """
    with contextlib.suppress(AttributeError):  # not glibc
        _libc.malloc_trim(0)


def _chunk_sender(send: Callable[[p.Message], None]) -> Callable[[str], None]:
    """Stream chunks until the client goes away, then drop them silently.

    The exec must run on to its end marker even when nobody reads it any more: stopping
    mid-read would leave the marker in the PTY, where the next exec would read it as its
    own output. The final reply's send then fails and closes the connection.
    """
    gone = False

    def on_chunk(text: str) -> None:
        nonlocal gone
        if not gone:
            try:
                send(p.Chunk(data=text))
            except OSError:
                gone = True

    return on_chunk


@dataclass
class RunnerConfig:
    env: dict[str, str]
    uid: int = 1000
    gid: int = 1000
    workdir: str = "/workspace"
    shell_prefer: list[str] = field(default_factory=lambda: ["bash", "sh"])
    exec_mode: str = "stateful"
    stage_dir: str = "/tmp"
    # runs in the thread that spawns each user process (``init.spawn``): drops that thread's
    # privileges and loads its seccomp filter, never the whole process's
    setup: Callable[[], None] | None = None
    # called once each, when the first request arrives and after its reply: PID 1 tells
    # the fork server (which forks its next spare meanwhile and may learn which pages the
    # sandbox's start wrote: ``sandkasten.runtime.linux.pretouch``)
    first_request_started: Callable[[], None] | None = None
    first_request_done: Callable[[], None] | None = None


class Runner:
    def __init__(self, cfg: RunnerConfig, reaper: Reaper,
                 on_shutdown: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.reaper = reaper
        self.files = Files(cfg.uid, cfg.gid, cfg.workdir)
        self.on_shutdown = on_shutdown
        self._shell: Shell | None = None
        self._shell_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._busy = 0  # requests being handled, over all connections
        self._busy_lock = threading.Lock()
        self._closed = False

    # --- shell ----------------------------------------------------------------------------

    def shell(self) -> Shell:
        with self._shell_lock:
            if self._shell is None:
                self._shell = Shell(ShellConfig(
                    env=self.cfg.env, uid=self.cfg.uid, gid=self.cfg.gid,
                    workdir=self.cfg.workdir, shell_prefer=self.cfg.shell_prefer,
                    stage_dir=self.cfg.stage_dir, setup=self.cfg.setup), self.reaper)
            return self._shell

    def prestart(self) -> None:
        """Start the shell now, so the first exec finds it starting or ready.

        Returns once the shell is forked: its exec and start-up are awaited by the first
        request that needs it. An error here is not fatal: that request retries and reports.
        """
        if self.cfg.exec_mode == "stateful":
            with contextlib.suppress(Exception):
                self.shell()

    def close(self) -> None:
        self._closed = True
        with self._shell_lock:
            if self._shell is not None:
                self._shell.close()
                self._shell = None
        for c in list(self._conns):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    # --- requests -------------------------------------------------------------------------

    def handle(self, msg: p.Message, send: Callable[[p.Message], None]) -> None:
        """Answer one request; every path ends with exactly one final reply."""
        try:
            send(self._dispatch(msg, send))
        except FileOpError as e:
            send(p.Error(code=e.code, message=str(e)))
        except p.ProtocolError as e:
            send(p.Error(code="invalid", message=str(e)))
        except (OSError, RuntimeError) as e:
            send(p.Error(code="internal", message=str(e)))
        except (TypeError, ValueError, AttributeError) as e:  # fields of the wrong type
            send(p.Error(code="invalid", message=f"{type(msg).__name__}: {e}"))

    def _dispatch(self, msg: p.Message, send: Callable[[p.Message], None]) -> p.Message:
        if isinstance(msg, p.Exec | p.ExecStream):
            on_chunk = _chunk_sender(send) if isinstance(msg, p.ExecStream) else None
            if self.cfg.exec_mode == "stateless":
                code, out, _, trunc, to, ms = run_plain(
                    msg.cmd, env=self.cfg.env, cwd=self.cfg.workdir, reaper=self.reaper,
                    setup=self.cfg.setup, timeout_ms=msg.timeout_ms,
                    max_output=msg.max_output, split=False, on_chunk=on_chunk)
                return p.ExecDone(exit_code=code, cwd=self.cfg.workdir,
                                  output=clean(out, msg.raw_output), truncated=trunc,
                                  duration_ms=ms, timed_out=to)
            return self.shell().run(msg, on_chunk)
        if isinstance(msg, p.ExecSplit):
            if self.cfg.exec_mode == "stateless":
                cwd, env = self.cfg.workdir, self.cfg.env
            else:
                cwd, env = self.shell().exported_env()
                for k in ("PS1", "PS2", "PS4", "_"):
                    env.pop(k, None)
            code, out, err, trunc, to, ms = run_plain(
                msg.cmd, env=env, cwd=cwd, reaper=self.reaper, setup=self.cfg.setup,
                timeout_ms=msg.timeout_ms, max_output=msg.max_output, split=True)
            return p.SplitDone(exit_code=code, cwd=cwd, stdout=clean(out, True),
                               stderr=clean(err, True), truncated=trunc, duration_ms=ms,
                               timed_out=to)
        if isinstance(msg, p.WriteFiles):
            return p.Written(paths=self.files.write(msg.files))
        if isinstance(msg, p.ReadFile):
            data, truncated = self.files.read(msg.path, msg.max_bytes)
            return p.FileData(data_b64=p.b64(data), truncated=truncated)
        if isinstance(msg, p.ListDir):
            return p.Listing(entries=self.files.list(msg.path))
        if isinstance(msg, p.Ping):
            shell = self._shell.path if self._shell is not None else ""
            return p.Pong(pid=os.getpid(), shell=shell, exec_mode=self.cfg.exec_mode)
        if isinstance(msg, p.Shutdown):
            if self.on_shutdown is not None:
                threading.Thread(target=self.on_shutdown, daemon=True).start()
            return p.Ok()
        return p.Error(code="invalid", message=f"not a request: {type(msg).__name__}")

    # --- sockets --------------------------------------------------------------------------

    def serve_connection(self, conn: socket.socket) -> None:
        """Serve ``conn``'s requests in order until the daemon closes it.

        The daemon keeps connections open between requests, so "idle" is not "no
        connection": once a connection has had no request for ``IDLE_TRIM`` seconds and
        no other request is in flight, free memory is given back (``release_free_memory``),
        off every request's path.
        """
        self._conns.add(conn)
        dec = p.Decoder()
        lock = threading.Lock()
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        trimmed = True

        def send(m: p.Message) -> None:
            with lock:
                conn.sendall(p.encode(m))

        try:
            while not self._closed:
                if not trimmed and not poller.poll(IDLE_TRIM_MS):
                    with self._busy_lock:
                        idle = self._busy == 0
                    if idle:
                        release_free_memory()
                    trimmed = True
                    continue
                data = conn.recv(1 << 20)
                if not data:
                    break
                for msg in dec.feed(data):
                    with self._busy_lock:
                        self._busy += 1
                        started, self.cfg.first_request_started = \
                            self.cfg.first_request_started, None
                    if started is not None:
                        with contextlib.suppress(Exception):
                            started()
                    try:
                        self.handle(msg, send)
                    finally:
                        with self._busy_lock:
                            self._busy -= 1
                            done, self.cfg.first_request_done = \
                                self.cfg.first_request_done, None
                    if done is not None:
                        with contextlib.suppress(Exception):
                            done()
                    trimmed = False
        except p.ProtocolError as e:
            with contextlib.suppress(OSError):
                send(p.Error(code="invalid", message=str(e)))
        except OSError:
            pass  # the client went away mid-reply
        finally:
            self._conns.discard(conn)
            conn.close()
            if not self._conns:
                release_free_memory()  # idle again: after the reply, off its path

    def serve(self, listener: socket.socket) -> None:
        """Accept connections forever (until the listener is closed)."""
        while not self._closed:
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._closed:
                    return
                continue
            threading.Thread(target=self.serve_connection, args=(conn,), daemon=True).start()


def serve_pid1(listener: socket.socket, cfg: RunnerConfig,
               ready: Callable[[], None] | None = None) -> None:
    """Become the sandbox's PID 1: non-dumpable, signals taken in this thread, serve.

    Never returns: exits when the host sends SIGTERM/SIGINT/SIGHUP or a Shutdown arrives.
    """
    set_non_dumpable()
    os.setgroups([])  # file requests use fsuid/fsgid; no root supplementary groups linger
    block_signals()  # before any thread starts: every thread inherits the mask
    # A request hops between threads (accept, connection, spawn): with the default 5 ms
    # switch interval a thread that wants the GIL may wait that long for a busy one.
    sys.setswitchinterval(SWITCH_INTERVAL)
    reaper = Reaper()

    def shutdown() -> None:
        os.kill(os.getpid(), 15)  # handled by serve_signals: forward and exit

    runner = Runner(cfg, reaper, on_shutdown=shutdown)
    # Ready first (the listener already queues connections): the shell is spawned while
    # the creator hears of it and sends its first exec, which is the one to wait for the
    # shell's start-up.
    if ready is not None:
        ready()
    threading.Thread(target=runner.serve, args=(listener,), name="accept", daemon=True).start()
    runner.prestart()
    # Whatever exists now (the fork server's objects and our setup's) is never collected:
    # a collection walking it would copy its pages. The collector (disabled by the fork
    # server until here) only looks at what the requests allocate from now on.
    gc.freeze()
    gc.enable()
    release_free_memory()
    # on exit PID 1 only marks itself closed: serve_signals kills and reaps everything, and
    # waiting for the shell here would wait on the very thread that reaps
    serve_signals(reaper, lambda: setattr(runner, "_closed", True))
