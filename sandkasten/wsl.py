"""``sandkasten-wsl``: start, check and stop the daemon inside WSL2 from Windows.

    sandkasten-wsl start [--distro D] [--config PATH] [--binary PATH]
    sandkasten-wsl status [--distro D] [--config PATH] [--url URL]
    sandkasten-wsl stop [--distro D] [--config PATH]

``start`` runs ``wsl [-d D] -- sudo sandkasten daemon -d [--config PATH]`` and waits for
``/healthz``; ``stop`` runs ``... sudo sandkasten stop``; ``status`` asks the daemon's
``/healthz`` from Windows (WSL2 forwards localhost). Before running anything it checks that
``wsl.exe`` exists, that the distribution is installed (``wsl --list --quiet``, which
Windows writes in UTF-16LE) and that the daemon binary is on the distribution's PATH.

Pure standard library plus typer: it installs with pip on Windows and imports nothing
Linux-specific. Commands after ``--`` are run by the distribution's login shell, so
``~/sandkasten.yaml`` means the WSL user's home, as in the seed guide.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_PORT = 8080
EXIT_NOT_RUNNING = 3  # like `systemctl status`: the tool worked, the daemon is not running

app = typer.Typer(
    name="sandkasten-wsl",
    help="Start, check and stop the Sandkasten daemon inside WSL2 from Windows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class WslError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


# ---- pure helpers (tested with tables) ---------------------------------------------------

def decode_wsl_output(data: bytes) -> str:
    """``wsl.exe``'s own messages (e.g. ``--list``) are UTF-16LE, with or without a BOM;
    output of Linux commands passes through as UTF-8. NUL bytes tell them apart."""
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le", "replace")
    if b"\x00" in data:
        return data.decode("utf-16-le", "replace")
    return data.decode("utf-8", "replace")


def parse_distro_list(data: bytes) -> list[str]:
    """Names from ``wsl --list --quiet`` (one per line, CRLF, maybe UTF-16LE)."""
    text = decode_wsl_output(data).replace("\x00", "")
    return [line.strip() for line in text.splitlines() if line.strip()]


def in_wsl(environ: dict[str, str] | None = None, osrelease: str | None = None) -> bool:
    """True inside a WSL distribution: WSL sets WSL_DISTRO_NAME / WSL_INTEROP and its
    kernel release names Microsoft."""
    env = os.environ if environ is None else environ
    if env.get("WSL_DISTRO_NAME") or env.get("WSL_INTEROP"):
        return True
    if osrelease is None:
        try:
            osrelease = Path("/proc/sys/kernel/osrelease").read_text()
        except OSError:
            osrelease = ""
    return "microsoft" in osrelease.lower()


_LISTEN = re.compile(r"""^listen\s*:\s*["']?([^"'\s#]+)""", re.M)


def port_from_config(text: str) -> int | None:
    """The port of the config's ``listen: "HOST:PORT"``, or None if absent or unreadable."""
    m = _LISTEN.search(text)
    if not m:
        return None
    _, _, port = m.group(1).rpartition(":")
    return int(port) if port.isdigit() and 0 < int(port) < 65536 else None


def wsl_argv(wsl: str, distro: str | None, command: list[str]) -> list[str]:
    """``wsl [-d DISTRO] -- COMMAND...``"""
    return [wsl, *(["-d", distro] if distro else []), "--", *command]


# ---- talking to wsl.exe ------------------------------------------------------------------

@dataclass
class Wsl:
    exe: str
    distro: str | None

    @classmethod
    def find(cls, distro: str | None, wsl_path: str | None = None) -> Wsl:
        if in_wsl():
            raise WslError(
                "sandkasten-wsl runs on Windows and controls the daemon inside WSL; you are "
                "inside WSL already: run `sudo sandkasten daemon -d --config sandkasten.yaml`"
            )
        exe = wsl_path or os.environ.get("SANDKASTEN_WSL") or shutil.which("wsl.exe") \
            or shutil.which("wsl")
        if not exe:
            raise WslError(
                "wsl.exe not found on PATH: install WSL2 from an administrator PowerShell "
                "with `wsl --install -d Ubuntu-22.04`, then restart"
            )
        return cls(exe=exe, distro=distro)

    def run(self, argv: list[str], *, capture: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                argv, capture_output=capture, timeout=timeout, check=False,
                stdin=None if not capture else subprocess.DEVNULL,
            )
        except FileNotFoundError as e:
            raise WslError(f"cannot run {self.exe}: {e}") from e
        except subprocess.TimeoutExpired as e:
            raise WslError(f"`{shlex.join(argv)}` did not finish in {timeout:.0f} s") from e

    def in_distro(self, command: list[str], *, capture: bool = True, timeout: float = 60
                  ) -> subprocess.CompletedProcess[bytes]:
        return self.run(wsl_argv(self.exe, self.distro, command), capture=capture,
                        timeout=timeout)

    def check_distro(self) -> None:
        res = self.run([self.exe, "--list", "--quiet"])
        names = parse_distro_list(res.stdout)
        if res.returncode != 0 or not names:
            raise WslError(
                "no WSL distribution is installed: run `wsl --install -d Ubuntu-22.04` "
                "in PowerShell"
            )
        if self.distro and self.distro.lower() not in {n.lower() for n in names}:
            raise WslError(
                f"WSL distribution {self.distro!r} is not installed (installed: "
                f"{', '.join(names)}); install it with `wsl --install -d {self.distro}`"
            )

    def check_binary(self, binary: str) -> str:
        res = self.in_distro(["command", "-v", binary])
        found = decode_wsl_output(res.stdout).strip()
        if res.returncode != 0 or not found:
            where = f"WSL distribution {self.distro!r}" if self.distro else "the default WSL " \
                "distribution"
            raise WslError(
                f"{binary!r} is not on the PATH in {where}: install Sandkasten there "
                "(see docs/windows.md) or pass --binary /path/to/sandkasten"
            )
        return found.splitlines()[-1]

    def read_file(self, path: str) -> str | None:
        """A config's text: paths like ``~/x`` or ``/etc/x`` are read inside WSL (``cat``),
        others (``C:\\...``, relative) on this side first."""
        local = Path(path)
        if not path.startswith(("~", "/")) and local.is_file():
            try:
                return local.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
        res = self.in_distro(["cat", path])
        return decode_wsl_output(res.stdout) if res.returncode == 0 else None


def health_url(wsl: Wsl | None, config: str | None, url: str | None) -> str:
    """--url, else $SANDKASTEN_URL, else localhost with the config's port (default 8080)."""
    url = url or os.environ.get("SANDKASTEN_URL")
    if url:
        return url.rstrip("/").removesuffix("/v1") + "/healthz"
    port = None
    if config and wsl is not None:
        text = wsl.read_file(config)
        port = port_from_config(text) if text else None
    return f"http://localhost:{port or DEFAULT_PORT}/healthz"


def check_health(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(healthy, detail) for one GET of ``/healthz``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) URL
            body = resp.read(4096)
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return False, f"not reachable ({reason})"
    try:
        ok = json.loads(body).get("status") == "ok"
    except (ValueError, AttributeError):
        ok = False
    return ok, body.decode("utf-8", "replace").strip()


# ---- commands ----------------------------------------------------------------------------

def _fail(message: str) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(1)


DistroOpt = Annotated[str | None, typer.Option("--distro", "-d",
                                               help="WSL distribution (default: WSL's default)")]
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c",
                                               help="config file path inside WSL")]
BinaryOpt = Annotated[str, typer.Option("--binary", help="the sandkasten command inside WSL")]
WslOpt = Annotated[str | None, typer.Option("--wsl", help="path of wsl.exe", hidden=True)]


def _prepare(distro: str | None, wsl_path: str | None, binary: str | None) -> Wsl:
    wsl = Wsl.find(distro, wsl_path)
    wsl.check_distro()
    if binary:
        wsl.check_binary(binary)
    return wsl


@app.command()
def start(
    distro: DistroOpt = None,
    config: ConfigOpt = None,
    binary: BinaryOpt = "sandkasten",
    wait: Annotated[float, typer.Option(help="seconds to wait for /healthz")] = 20.0,
    url: Annotated[str | None, typer.Option(help="daemon URL as seen from Windows")] = None,
    wsl_path: WslOpt = None,
) -> None:
    """Start the daemon in the background inside WSL (`sudo sandkasten daemon -d`)."""
    try:
        wsl = _prepare(distro, wsl_path, binary)
        command = ["sudo", binary, "daemon", "-d", *(["--config", config] if config else [])]
        print(f"running: {shlex.join(wsl_argv('wsl', distro, command))}")
        # Not captured: sudo may ask for the password on this console.
        res = wsl.in_distro(command, capture=False, timeout=300)
        if res.returncode != 0:
            raise WslError(f"the daemon did not start (exit status {res.returncode}); "
                           f"see `wsl -- sudo {binary} logs`")
        target = health_url(wsl, config, url)
        deadline = time.monotonic() + wait
        ok, detail = check_health(target)
        while not ok and time.monotonic() < deadline:
            time.sleep(0.5)
            ok, detail = check_health(target)
    except WslError as e:
        raise _fail(str(e)) from None
    api = target.removesuffix("/healthz")
    if ok:
        print(f"sandkasten daemon ready\n  API:       {api}/v1")
    else:
        print(f"started, but {target} is {detail}; if it stays so, see "
              "'Connection refused from Windows' in docs/windows.md", file=sys.stderr)
        raise typer.Exit(EXIT_NOT_RUNNING)


@app.command()
def status(
    distro: DistroOpt = None,
    config: ConfigOpt = None,
    url: Annotated[str | None, typer.Option(help="daemon URL as seen from Windows")] = None,
    wsl_path: WslOpt = None,
) -> None:
    """Check that the daemon answers /healthz from Windows (exit 0 running, 3 not)."""
    try:
        wsl = Wsl.find(distro, wsl_path)
        wsl.check_distro()
        target = health_url(wsl, config, url)
    except WslError as e:
        raise _fail(str(e)) from None
    ok, detail = check_health(target)
    if ok:
        print(f"running: {target} answered {detail}")
        return
    print(f"not running: {target} {detail}; start it with `sandkasten-wsl start`")
    raise typer.Exit(EXIT_NOT_RUNNING)


@app.command()
def stop(
    distro: DistroOpt = None,
    config: ConfigOpt = None,
    binary: BinaryOpt = "sandkasten",
    wsl_path: WslOpt = None,
) -> None:
    """Stop the daemon inside WSL (`sudo sandkasten stop`)."""
    try:
        wsl = _prepare(distro, wsl_path, binary)
        command = ["sudo", binary, "stop", *(["--config", config] if config else [])]
        print(f"running: {shlex.join(wsl_argv('wsl', distro, command))}")
        res = wsl.in_distro(command, capture=False, timeout=120)
    except WslError as e:
        raise _fail(str(e)) from None
    if res.returncode != 0:
        raise _fail(f"`sandkasten stop` exited with status {res.returncode}")
    print("stopped")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
