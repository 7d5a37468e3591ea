"""Daemon commands: ``sandkasten [--config F]`` (foreground), ``daemon [-d]``, ``stop``, ``ps``,
``rm``, ``logs [-f]``, ``version``.

The commands other than the daemon itself find it through the config (``--config``, else
``$SANDKASTEN_CONFIG``, else ``./sandkasten.yaml`` when present, else the defaults): its
``data_dir`` holds ``run/daemon.json`` (pid, address) and ``run/sandkasten.log``; its
``api_key`` authenticates ``ps`` and ``rm``. Errors are one line ``error: …`` and a
``hint: …`` on stderr, exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

import sandkasten
from sandkasten.cli.serve import LOG_FILE, STATE_FILE, preflight
from sandkasten.config import CONFIG_ENV, Config, load_config
from sandkasten.errors import SandkastenError

# A plain string, not a click Path: a file only root may read must reach load_config,
# which answers with "permission denied … run it with sudo" instead of a usage error.
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="sandkasten.yaml (default: $SANDKASTEN_CONFIG or ./sandkasten.yaml)",
        show_default=False,
    ),
]


def fail(message: str, hint: str | None = None) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    return typer.Exit(1)


def config_path(opt: str | Path | None) -> Path | None:
    if opt is not None:
        return Path(opt)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    local = Path("sandkasten.yaml")
    return local if local.is_file() else None


def _load(opt: str | Path | None) -> Config:
    try:
        return load_config(config_path(opt))
    except SandkastenError as e:
        raise fail(e.message, e.hint) from None


def run_foreground(config_opt: str | Path | None) -> None:
    from sandkasten.cli.serve import serve

    config = _load(config_opt)
    try:
        code = serve(config)
    except SandkastenError as e:
        raise fail(e.message, e.hint) from None
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


def root(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """With no command: run the daemon in the foreground (Ctrl+C stops it)."""
    ctx.obj = {"config": config}
    if config is not None:
        # `sandkasten --config F image …`: the image commands read $SANDKASTEN_CONFIG.
        os.environ[CONFIG_ENV] = str(Path(config).absolute())
    if ctx.invoked_subcommand is None:
        run_foreground(config)


def _cfg(ctx: typer.Context, config: str | None) -> Path | None:
    chosen = config or (ctx.obj or {}).get("config")
    return Path(chosen) if chosen else None


def daemon(
    ctx: typer.Context,
    config: ConfigOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background")] = False,
) -> None:
    """Run the daemon (in the background with -d: pid file and log under data_dir/run)."""
    path = _cfg(ctx, config)
    if not detach:
        run_foreground(path)
    cfg = _load(path)
    try:
        preflight(cfg)
    except SandkastenError as e:
        raise fail(e.message, e.hint) from None
    running = _state(cfg)
    if running:
        raise fail(
            f"the daemon is already running (pid {running['pid']}, {running['url']})",
            "sandkasten stop",
        )
    log_path = cfg.run_dir / LOG_FILE
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    argv = [sys.executable, "-m", "sandkasten.cli"]
    if path is not None:
        argv += ["--config", str(path.resolve())]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = _state(cfg)
        if state and state.get("pid") == proc.pid:
            typer.echo(f"sandkasten daemon started (pid {proc.pid})")
            typer.echo(f"  API:       {state['url']}")
            typer.echo(f"  logs:      sandkasten logs -f   ({log_path})")
            return
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            for line in tail:
                typer.echo(line, err=True)
            raise fail(
                f"the daemon exited during start-up (status {proc.returncode})",
                f"full log: {log_path}",
            )
        time.sleep(0.1)
    raise fail("the daemon did not become ready within 60 s", f"see {log_path}")


def _state(cfg: Config) -> dict[str, Any] | None:
    """The running daemon's pid and address, if its process still lives."""
    try:
        state = json.loads((cfg.run_dir / STATE_FILE).read_text())
        pid = int(state["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if b"sandkasten" in cmdline else None


def stop(
    ctx: typer.Context,
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 30.0,
) -> None:
    """Stop the background daemon (SIGTERM; sessions are destroyed or kept per config)."""
    cfg = _load(_cfg(ctx, config))
    state = _state(cfg)
    if not state:
        raise fail(
            f"no daemon is running for data_dir {cfg.data_dir}",
            "start one: sudo sandkasten daemon -d --config sandkasten.yaml",
        )
    pid = int(state["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        raise fail("permission denied", "run it with sudo: sudo sandkasten stop") from None
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        raise fail(
            f"the daemon (pid {pid}) did not stop within {timeout:g} s",
            f"see sandkasten logs; force it with: sudo kill -9 {pid}",
        )
    typer.echo(f"sandkasten daemon stopped (pid {pid})")


def _client(cfg: Config) -> httpx.Client:
    state = _state(cfg)
    base = state["url"].removesuffix("/v1") if state else f"http://{_connect_addr(cfg)}"
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30)


def _connect_addr(cfg: Config) -> str:
    host = cfg.host
    if host in ("0.0.0.0", "::"):  # noqa: S104 (connecting, not binding)
        host = "127.0.0.1"
    return f"[{host}]:{cfg.port}" if ":" in host else f"{host}:{cfg.port}"


def _call(cfg: Config, method: str, path: str) -> Any:
    try:
        with _client(cfg) as c:
            r = c.request(method, path)
    except httpx.TransportError:
        raise fail(
            f"cannot reach the daemon at {_connect_addr(cfg)}",
            "start it: sudo sandkasten --config sandkasten.yaml",
        ) from None
    try:
        body = r.json()
    except ValueError:
        body = {"error": r.text}
    if r.status_code >= 400:
        raise fail(body.get("error", f"HTTP {r.status_code}"), body.get("hint"))
    return body


def _ago(iso: str) -> str:
    try:
        then = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return iso
    secs = int((datetime.now(UTC) - then).total_seconds())
    future = secs < 0
    secs = abs(secs)
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= n:
            v = secs // n
            text = f"{v} {unit}{'s' if v != 1 else ''}"
            break
    else:
        text = f"{secs} second{'s' if secs != 1 else ''}"
    return f"in {text}" if future else f"{text} ago"


def ps(
    ctx: typer.Context,
    config: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only session ids")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, as the API returns it")] = False,
) -> None:
    """List sessions, like docker ps."""
    sessions = _call(_load(_cfg(ctx, config)), "GET", "/v1/sessions")
    if as_json:
        typer.echo(json.dumps(sessions, indent=2))
        return
    if quiet:
        for s in sessions:
            typer.echo(s["id"])
        return
    rows = [("SESSION ID", "IMAGE", "STATUS", "WORKSPACE", "CWD", "CREATED", "EXPIRES")]
    rows += [
        (
            s["id"],
            s["image"],
            s["status"],
            s["workspace_id"] or "-",
            s["cwd"],
            _ago(s["created_at"]),
            _ago(s["expires_at"]),
        )
        for s in sessions
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def rm(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(help="session ids", show_default=False)],
    config: ConfigOpt = None,
) -> None:
    """Destroy sessions."""
    cfg = _load(_cfg(ctx, config))
    for sid in ids:
        _call(cfg, "DELETE", f"/v1/sessions/{sid}")
        typer.echo(sid)


def logs(
    ctx: typer.Context,
    config: ConfigOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    tail: Annotated[int, typer.Option("--tail", "-n", help="lines from the end (0: all)")] = 0,
) -> None:
    """Print the background daemon's log (data_dir/run/sandkasten.log)."""
    cfg = _load(_cfg(ctx, config))
    path = cfg.run_dir / LOG_FILE
    try:
        f = open(path, errors="replace")  # noqa: SIM115 (followed below, closed in finally)
    except FileNotFoundError:
        raise fail(
            f"no log at {path}",
            "the log exists once the daemon ran with -d: "
            "sudo sandkasten daemon -d --config sandkasten.yaml",
        ) from None
    except PermissionError:
        raise fail(f"permission denied: {path}", "run it with sudo: sudo sandkasten logs") from None
    try:
        lines = f.readlines()
        for line in lines[-tail:] if tail else lines:
            sys.stdout.write(line)
        sys.stdout.flush()
        while follow:
            line = f.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.25)
    except KeyboardInterrupt:
        pass
    finally:
        f.close()


def version() -> None:
    """Print the version."""
    typer.echo(f"sandkasten {sandkasten.__version__}")


def register(app: typer.Typer) -> None:
    """Attach the daemon commands to the ``sandkasten`` app."""
    app.callback(invoke_without_command=True)(root)
    app.command("daemon")(daemon)
    app.command("stop")(stop)
    app.command("ps")(ps)
    app.command("rm")(rm)
    app.command("logs")(logs)
    app.command("version")(version)
