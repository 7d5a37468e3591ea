"""The session's shell: a persistent shell on a PTY, and plain children for split execs.

How an exec works (stateful mode). The shell (``bash --noediting -i``, else ``sh -i``) reads
its commands from a pipe; its stdout and stderr are a PTY, which is also its controlling
terminal, so programs see a terminal and the shell runs each foreground job in its own
process group. For each exec the runner writes::

    { eval '<cmd, single-quote escaped>'
    } </dev/null 2>&1
    printf '\\036<nonce>:%d:%s\\037<nonce>\\n' "$?" "$PWD"

- ``eval`` keeps cd, exports, functions and background jobs in the shell; a syntax error
  fails that line only (interactive shells survive it) and the marker line still runs.
- ``</dev/null``: a command that reads stdin gets EOF instead of eating the next exec.
- ``2>&1``: the command's stderr joins its stdout on the PTY, while the shell's own stderr
  is /dev/null: job notices ("[1]+ Done ...") that an interactive shell prints before
  reading the next command never land in the next exec's output.
- The marker carries a fresh random nonce per exec. The PTY does not echo the pipe's input,
  so the nonce never appears in the output unless the shell prints the marker: output of the
  command cannot forge an end of exec or an exit code.
- Timeout: SIGINT to the terminal's foreground process group (the command, not the shell),
  SIGKILL a moment later if it is still there; when the shell itself is busy (a builtin
  loop), SIGINT to the shell aborts the line. Then a second marker with a new nonce syncs the
  stream, so the next exec starts clean. The session survives; the result says timed_out.
- Commands over 16 KiB are written to a file in /tmp and sourced: shells read a pipe one
  byte at a time.
If the shell exits (``exit``), the exec returns its status and a fresh shell is started.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import stat
import sys
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runner import protocol as p
from runner.exports import END_LINE, parse_exports
from runner.init import ChildSpec, Reaper, spawn
from runner.output import Capped, StreamCleaner, clean

STAGE_THRESHOLD = 16 * 1024
KILL_GRACE = 0.5  # seconds between SIGINT and SIGKILL of a timed-out command
SYNC_TIMEOUT = 3.0
EXPORTS_MAX = 4 << 20  # a larger exports dump is not trusted (the environment has limits too)
_INIT = "unset HISTFILE 2>/dev/null; set +o history 2>/dev/null\n"


@dataclass
class ShellConfig:
    env: dict[str, str]
    uid: int = 1000
    gid: int = 1000
    workdir: str = "/workspace"
    shell_prefer: list[str] = field(default_factory=lambda: ["bash", "sh"])
    stage_dir: str = "/tmp"
    setup: Callable[[], None] | None = None  # drops the spawning thread's privileges


def find_shell(prefer: list[str], path: str) -> str:
    """The first of ``prefer`` found on ``path`` (absolute names are taken as they are)."""
    for name in prefer:
        candidates = [name] if name.startswith("/") else [
            os.path.join(d, name) for d in path.split(":") if d]
        for c in candidates:
            if os.path.isfile(c) and os.access(c, os.X_OK):
                return c
    raise FileNotFoundError(f"none of the shells {prefer} exists in the image")


def _nonce() -> str:
    return os.urandom(8).hex()  # not ``secrets``: one module less in every PID 1


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


class Shell:
    """One persistent shell; ``run`` is serialised by a lock (one exec at a time)."""

    def __init__(self, cfg: ShellConfig, reaper: Reaper) -> None:
        self.cfg = cfg
        self.reaper = reaper
        self.lock = threading.Lock()
        self.path = find_shell(cfg.shell_prefer, cfg.env.get("PATH", "/usr/bin:/bin"))
        self.is_bash = os.path.basename(self.path) == "bash"
        self.pid = -1
        self._master = -1
        self._stdin = -1
        self.cwd = cfg.workdir
        self._pending: str | None = None  # nonce of a marker written but not yet read
        # The state after the last completed exec, for split execs: cwd and the path of the
        # shell's exports dump (None: not yet dumped, the environment is still cfg.env).
        self._state_lock = threading.Lock()
        self._exports: str | None = None
        self._start()

    # --- lifecycle ------------------------------------------------------------------------

    def _start(self) -> None:
        self._forget_state()
        master, slave = os.openpty()
        r, w = os.pipe()
        devnull = os.open("/dev/null", os.O_RDWR)
        try:
            os.fchown(slave, self.cfg.uid, self.cfg.gid)
            os.fchown(r, self.cfg.uid, self.cfg.gid)  # the shell reopens it as /proc/self/fd/3
            os.set_blocking(master, False)
            env = self._start_env()
            env.update(PS1="", PS2="", PS4="+ ")
            if self.is_bash:
                # bash reads a pipe on stdin one byte at a time and never loses input
                argv = [self.path, "--norc", "--noprofile", "--noediting", "+o", "history",
                        "-i"]
                spec = ChildSpec(argv, env, self.cfg.workdir, r, slave, devnull, ctty=slave)
            else:
                # ash/dash: commands from fd 3, stdin /dev/null (with commands on stdin,
                # busybox runs some pipeline members on the shell's own input)
                argv = [self.path, "-i", "/proc/self/fd/3"]
                spec = ChildSpec(argv, env, self.cfg.workdir, devnull, slave, devnull,
                                 ctty=slave, fd3=r)
            self.pid = self.reaper.spawn(lambda: spawn(spec, self.cfg.setup))
        except BaseException:
            for fd in (master, w):
                os.close(fd)
            raise
        finally:
            os.close(slave)
            os.close(r)
            os.close(devnull)
        self._master, self._stdin = master, w
        if self.is_bash:
            return  # quiet from its first byte: no rc files, no history, notices on stderr
        # ash/dash: history off where they have one; whatever the shell prints before this
        # marker is dropped. The marker is read by the first exec (``_run``), not here: the
        # shell starts up while its creator is told that the sandbox is ready.
        self._write(_INIT)
        self._pending = self._send_marker()

    def _ready(self) -> None:
        """Read the start-up marker if nobody has yet (holding the lock)."""
        if self._pending is not None:
            nonce, self._pending = self._pending, None
            self._await_marker(nonce)

    def _forget_state(self) -> None:
        with self._state_lock:
            old, self._exports = self._exports, None
            self.cwd = self.cfg.workdir
        if old is not None:
            with contextlib.suppress(OSError):
                os.unlink(old)

    def close(self) -> None:
        self._forget_state()
        if self.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.reaper.wait(self.pid, 2.0)
            self.pid = -1
        for fd in (self._master, self._stdin):
            if fd >= 0:
                os.close(fd)
        self._master = self._stdin = -1

    def _restart(self) -> None:
        self.close()
        self._start()

    # --- I/O helpers ----------------------------------------------------------------------

    def _write(self, text: str) -> None:
        data = text.encode()
        while data:
            try:
                n = os.write(self._stdin, data)
            except BrokenPipeError:
                return  # the shell died; the read loop notices
            data = data[n:]

    def _read(self, timeout: float) -> bytes | None:
        """Bytes from the PTY; b"" on timeout; None when the shell is gone."""
        rl, _, _ = select.select([self._master], [], [], max(0.0, timeout))
        if not rl:
            return b"" if self.reaper.running(self.pid) else None
        try:
            return os.read(self._master, 65536)
        except BlockingIOError:
            return b""
        except OSError:  # EIO: no process holds the slave any more
            return None

    def _drained(self) -> None:
        """Wait until the shell has read everything written so far (ash/dash only).

        Those shells read their input in blocks and drop the rest of the block on a syntax
        error; the marker must therefore arrive in a later read than the command.
        """
        if self.is_bash:
            return
        buf = bytearray(4)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            fcntl.ioctl(self._stdin, termios.FIONREAD, buf)
            if int.from_bytes(buf, sys.byteorder) == 0:
                return
            time.sleep(0.00005)

    def _exports_path(self, nonce: str) -> str:
        return os.path.join(self.cfg.stage_dir, f".sandkasten-exports-{nonce}")

    def _marker_line(self, nonce: str) -> str:
        # The status is expanded by the first printf, before anything else runs; the marker
        # is complete only after the second, so the exports dump is on disk when the
        # runner sees it (see ``exports``; errors go to the shell's stderr, /dev/null).
        dump = self._exports_path(nonce)
        return (f"printf '\\036{nonce}:%d:' \"$?\"; "
                f"{{ export -p; echo '{END_LINE}'; }} >{dump} 2>/dev/null; "
                f"printf '%s\\037{nonce}\\n' \"$PWD\"\n")

    def _adopt(self, nonce: str, cwd: str) -> None:
        """The marker of ``nonce`` arrived: its cwd and exports dump are the shell's state."""
        with self._state_lock:
            old, self._exports = self._exports, self._exports_path(nonce)
            self.cwd = cwd
        if old is not None:
            with contextlib.suppress(OSError):
                os.unlink(old)

    def _send_marker(self) -> str:
        nonce = _nonce()
        self._write(self._marker_line(nonce))
        return nonce

    def _sync(self) -> str:
        """Write a bare marker and read up to it; returns the cwd."""
        return self._await_marker(self._send_marker())

    def _await_marker(self, nonce: str) -> str:
        """Read up to the marker of ``nonce``; returns the cwd. RuntimeError if none comes."""
        pat = re.compile(rb"\x1e" + nonce.encode() + rb":(-?\d+):(.*?)\x1f" + nonce.encode())
        buf = b""
        deadline = time.monotonic() + SYNC_TIMEOUT
        while time.monotonic() < deadline:
            data = self._read(deadline - time.monotonic())
            if data is None:
                break
            buf = (buf + data)[-65536:]
            m = pat.search(buf)
            if m:
                self._adopt(nonce, m.group(2).decode(errors="replace"))
                return self.cwd
        raise RuntimeError("shell did not answer")

    # --- exec -----------------------------------------------------------------------------

    def run(self, req: p.Exec | p.ExecStream,
            on_chunk: Callable[[str], None] | None = None) -> p.ExecDone:
        with self.lock:
            try:
                return self._run(req, on_chunk)  # skips a start-up marker still unread
            except RuntimeError:
                self._restart()
                raise

    def _run(self, req: p.Exec | p.ExecStream,
             on_chunk: Callable[[str], None] | None) -> p.ExecDone:
        start = time.monotonic()
        nonce = _nonce()
        staged = None
        if len(req.cmd.encode()) > STAGE_THRESHOLD:
            staged = self._stage(req.cmd, nonce)
            body = f"{{ . {_quote(staged)}\n}} </dev/null 2>&1\n"
        elif self.is_bash:
            # Sourced, not eval'd: bash announces a job put in the background ("[1] 42")
            # only while it reads commands interactively, and a sourced script is read
            # non-interactively. The script is a here-document on fd 9 (closed again
            # before the command runs, so no child inherits it); the delimiter carries the
            # nonce, so no line of the command can end it early.
            text = req.cmd if req.cmd.endswith("\n") else req.cmd + "\n"
            eof = f"SANDKASTEN_{nonce}"
            body = (f"{{ . /proc/self/fd/9 9<<'{eof}'\nexec 9<&-; {text}{eof}\n"
                    f"}} </dev/null 2>&1\n")
        else:
            body = f"{{ eval {_quote(req.cmd)}\n}} </dev/null 2>&1\n"
        # Right after start-up the shell may still be on its start-up lines: the exec is
        # queued behind them instead of waiting for their marker (one round trip less on
        # a sandbox's first exec), and the output up to that marker is dropped.
        skip = None
        if self._pending is not None:
            skip = re.compile(rb"\x1e" + self._pending.encode() + rb":-?\d+:.*?\x1f"
                              + self._pending.encode() + rb"\r?\n")
            self._pending = None
        self._write(body)
        self._drained()
        self._write(self._marker_line(nonce))
        pat = re.compile(rb"\x1e" + nonce.encode() + rb":(-?\d+):(.*?)\x1f" + nonce.encode()
                         + rb"\r?\n")
        out = Capped(req.max_output)
        stream = StreamCleaner(req.raw_output) if on_chunk else None
        tail = b""  # unconsumed bytes that may hold the start of the marker
        deadline = None if req.timeout_ms is None else start + req.timeout_ms / 1000
        timed_out, exit_code, shell_gone = False, None, False
        kill_at: float | None = None
        while True:
            now = time.monotonic()
            wait = 0.25
            if deadline is not None and not timed_out:
                wait = min(wait, deadline - now)
            if kill_at is not None:
                wait = min(wait, kill_at - now)
            data = self._read(wait)
            if data is None:
                shell_gone = True
                data = b""
            tail += data
            if skip is not None:
                m0 = skip.search(tail)
                if m0 is not None:
                    tail, skip = tail[m0.end():], None
                elif not shell_gone:
                    tail = tail[-4096:]  # start-up noise only; the marker is shorter
            m = pat.search(tail) if skip is None or shell_gone else None
            emit_upto = m.start() if m else len(tail)
            if skip is not None and not shell_gone:
                emit_upto = 0  # nothing of the command's output has come yet
            elif not m and not shell_gone:
                hold = tail.rfind(b"\x1e")
                if hold != -1:
                    emit_upto = hold
            piece, tail = tail[:emit_upto], tail[emit_upto:]
            kept = out.add(piece)
            if stream is not None and on_chunk is not None and kept:
                text = stream.feed(kept)
                if text:
                    on_chunk(text)
            if m:
                exit_code = int(m.group(1))
                self._adopt(nonce, m.group(2).decode(errors="replace"))
                break
            if shell_gone:
                exit_code = self.reaper.wait(self.pid, 1.0)
                exit_code = 0 if exit_code is None else exit_code
                break
            now = time.monotonic()
            if deadline is not None and not timed_out and now >= deadline:
                timed_out = True
                self._interrupt(signal.SIGINT)
                kill_at = now + KILL_GRACE
            elif kill_at is not None and now >= kill_at:
                self._interrupt(signal.SIGKILL)
                kill_at = None
                break
        if stream is not None and on_chunk is not None:
            text = stream.feed(b"", final=True)
            if text:
                on_chunk(text)
        if staged:
            with contextlib.suppress(OSError):
                os.unlink(staged)
        if shell_gone:
            self._restart()
        elif timed_out:
            # the marker may or may not come (an interrupted line is dropped); resync
            self._sync()
        if exit_code is None:
            exit_code = 124
        return p.ExecDone(
            exit_code=exit_code, cwd=self.cwd, output=clean(bytes(out.buf), req.raw_output),
            truncated=out.truncated, duration_ms=int((time.monotonic() - start) * 1000),
            timed_out=timed_out)

    def _interrupt(self, sig: int) -> None:
        try:
            fg = os.tcgetpgrp(self._master)
        except OSError:
            fg = -1
        try:
            if fg > 0 and fg != self.pid:
                os.killpg(fg, sig)
            elif sig == signal.SIGINT:
                os.kill(self.pid, sig)  # a builtin is running: the shell drops the line
        except ProcessLookupError:
            pass

    def _stage(self, content: str, nonce: str) -> str:
        path = os.path.join(self.cfg.stage_dir, f".sandkasten-cmd-{nonce}.sh")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchown(fd, self.cfg.uid, self.cfg.gid)
            os.write(fd, content.encode())
        finally:
            os.close(fd)
        return path

    def exported_env(self) -> tuple[str, dict[str, str]]:
        """The shell's cwd and exported environment as its last completed exec left them.

        Never waits for a running exec: every marker comes with a dump of the shell's
        exports (``_marker_line``), so the state after the last completed exec is on disk.
        Only before anyone has read the start-up marker is the lock taken, and only if it
        is free. A dump the sandbox user removed or replaced (or one a full /tmp cut short)
        is ignored: the shell's start-up environment is used instead.
        """
        if self._pending is not None and self.lock.acquire(blocking=False):
            try:
                self._ready()
            except RuntimeError:
                pass  # the next exec finds the shell dead and restarts it
            finally:
                self.lock.release()
        with self._state_lock:
            cwd, path = self.cwd, self._exports
            env = self._read_exports(path) if path is not None else None
        return cwd, env if env is not None else self._start_env()

    def _start_env(self) -> dict[str, str]:
        env = dict(self.cfg.env)
        env.setdefault("TERM", "xterm")
        env.setdefault("SHELL", self.path)  # else the shell looks itself up in /etc/passwd
        return env

    def _read_exports(self, path: str) -> dict[str, str] | None:
        # The dump is the sandbox user's file in a directory the user can write: never
        # follow a link, never block on a FIFO, accept only a regular file the user owns.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != self.cfg.uid \
                    or st.st_size > EXPORTS_MAX:
                return None
            raw = b""
            while len(raw) <= EXPORTS_MAX and (chunk := os.read(fd, 65536)):
                raw += chunk
        except OSError:
            return None
        finally:
            os.close(fd)
        return parse_exports(raw.decode("utf-8", errors="replace"))
