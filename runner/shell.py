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
import secrets
import select
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runner import protocol as p
from runner.init import ChildSpec, Reaper, fork_exec
from runner.output import Capped, StreamCleaner, clean

STAGE_THRESHOLD = 16 * 1024
KILL_GRACE = 0.5  # seconds between SIGINT and SIGKILL of a timed-out command
SYNC_TIMEOUT = 3.0


@dataclass
class ShellConfig:
    env: dict[str, str]
    uid: int = 1000
    gid: int = 1000
    workdir: str = "/workspace"
    shell_prefer: list[str] = field(default_factory=lambda: ["bash", "sh"])
    stage_dir: str = "/tmp"
    setup: Callable[[], None] | None = None  # drop privileges + seccomp, in the child


def find_shell(prefer: list[str], path: str) -> str:
    """The first of ``prefer`` found on ``path`` (absolute names are taken as they are)."""
    for name in prefer:
        candidates = [name] if name.startswith("/") else [
            os.path.join(d, name) for d in path.split(":") if d]
        for c in candidates:
            if os.path.isfile(c) and os.access(c, os.X_OK):
                return c
    raise FileNotFoundError(f"none of the shells {prefer} exists in the image")


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
        self._start()

    # --- lifecycle ------------------------------------------------------------------------

    def _start(self) -> None:
        master, slave = os.openpty()
        r, w = os.pipe()
        devnull = os.open("/dev/null", os.O_RDWR)
        try:
            os.fchown(slave, self.cfg.uid, self.cfg.gid)
            os.fchown(r, self.cfg.uid, self.cfg.gid)  # the shell reopens it as /proc/self/fd/3
            os.set_blocking(master, False)
            env = dict(self.cfg.env)
            env.update(PS1="", PS2="", PS4="+ ")
            env.setdefault("TERM", "xterm")
            if self.is_bash:
                # bash reads a pipe on stdin one byte at a time and never loses input
                argv = [self.path, "--norc", "--noprofile", "--noediting", "-i"]
                spec = ChildSpec(argv, env, self.cfg.workdir, r, slave, devnull, ctty=slave)
            else:
                # ash/dash: commands from fd 3, stdin /dev/null (with commands on stdin,
                # busybox runs some pipeline members on the shell's own input)
                argv = [self.path, "-i", "/proc/self/fd/3"]
                spec = ChildSpec(argv, env, self.cfg.workdir, devnull, slave, devnull,
                                 ctty=slave, fd3=r)
            self.pid = self.reaper.spawn(lambda: fork_exec(spec, self.cfg.setup))
        except BaseException:
            for fd in (master, w):
                os.close(fd)
            raise
        finally:
            os.close(slave)
            os.close(r)
            os.close(devnull)
        self._master, self._stdin = master, w
        # Silence history and greetings; everything before the first marker is discarded.
        self._write("unset HISTFILE 2>/dev/null; set +o history 2>/dev/null\n")
        self._sync()

    def close(self) -> None:
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

    def _marker_line(self, nonce: str) -> str:
        return f"printf '\\036{nonce}:%d:%s\\037{nonce}\\n' \"$?\" \"$PWD\"\n"

    def _sync(self) -> str:
        """Write a bare marker and read up to it; returns the cwd. Restarts a dead shell."""
        nonce = secrets.token_hex(8)
        self._write(self._marker_line(nonce))
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
                self.cwd = m.group(2).decode(errors="replace")
                return self.cwd
        raise RuntimeError("shell did not answer")

    # --- exec -----------------------------------------------------------------------------

    def run(self, req: p.Exec | p.ExecStream,
            on_chunk: Callable[[str], None] | None = None) -> p.ExecDone:
        with self.lock:
            try:
                return self._run(req, on_chunk)
            except RuntimeError:
                self._restart()
                raise

    def _run(self, req: p.Exec | p.ExecStream,
             on_chunk: Callable[[str], None] | None) -> p.ExecDone:
        start = time.monotonic()
        nonce = secrets.token_hex(8)
        staged = None
        if len(req.cmd.encode()) > STAGE_THRESHOLD:
            staged = self._stage(req.cmd, nonce)
            body = f"{{ . {_quote(staged)}\n}} </dev/null 2>&1\n"
        else:
            body = f"{{ eval {_quote(req.cmd)}\n}} </dev/null 2>&1\n"
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
            m = pat.search(tail)
            emit_upto = m.start() if m else len(tail)
            if not m and not shell_gone:
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
                self.cwd = m.group(2).decode(errors="replace")
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
        """The shell's cwd and exported environment, read from a child it starts."""
        nonce = secrets.token_hex(8)
        path = os.path.join(self.cfg.stage_dir, f".sandkasten-env-{nonce}")
        with self.lock:
            done = self._run(p.Exec(cmd=f"cat /proc/self/environ > {_quote(path)}",
                                    timeout_ms=5000), None)
        env = dict(self.cfg.env)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                raw = b""
                while chunk := os.read(fd, 65536):
                    raw += chunk
            finally:
                os.close(fd)
                os.unlink(path)
            if done.exit_code == 0:
                env = {}
                for item in raw.split(b"\0"):
                    k, sep, v = item.decode(errors="replace").partition("=")
                    if sep and k:
                        env[k] = v
        except OSError:
            pass
        return done.cwd, env
