"""``sandkasten image pull`` / ``imgbuilder pull``: the command around :func:`pull_image`.

Output: a live progress bar per layer (bytes, rate) when stderr is a terminal, one plain
line per layer otherwise, nothing but errors with ``--quiet``; the last line on stdout
names the image and its digest. Every failure is one ``error:`` line (and a ``hint:``)
on stderr and exit status 1; an interrupt exits 130 and keeps the downloaded bytes.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated

import typer

from imgbuilder.cli_common import (
    ConfigOption,
    DataDirOption,
    fail,
    open_store,
    reported_errors,
    require_root,
)
from imgbuilder.settings import load_registry_settings
from registry.errors import RegistryError

if TYPE_CHECKING:
    from imgbuilder.pull import PullEvent
    from registry.auth import Credentials


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


class _PlainProgress:
    """One line per layer event, for logs and pipes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}

    def __call__(self, ev: PullEvent) -> None:
        short = ev.digest.removeprefix("sha256:")[:12]
        line = None
        if ev.kind == "resolved":
            line = f"resolved {ev.digest} ({ev.message}, {_human(ev.total)} of layers)"
        elif ev.kind == "layer_skipped":
            line = f"{short}: already present"
        elif ev.kind == "layer_started":
            self._started[ev.digest] = time.monotonic()
            resumed = f", resuming at {_human(ev.resumed)}" if ev.resumed else ""
            line = f"{short}: downloading {_human(ev.total)}{resumed}"
        elif ev.kind == "layer_done":
            secs = max(time.monotonic() - self._started.get(ev.digest, time.monotonic()), 1e-6)
            line = f"{short}: done {_human(ev.total)} in {secs:.1f} s ({_human(ev.total / secs)}/s)"
        if line:
            with self._lock:
                typer.echo(line, err=True)

    def close(self) -> None:
        pass


class _RichProgress:
    """Live bars on a terminal (rich ships with typer)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._tasks: dict[str, object] = {}
        self._lock = threading.Lock()
        self._progress.start()

    def _task(self, ev: PullEvent) -> object:
        with self._lock:
            if ev.digest not in self._tasks:
                desc = ev.digest.removeprefix("sha256:")[:12]
                self._tasks[ev.digest] = self._progress.add_task(desc, total=ev.total or None)
            return self._tasks[ev.digest]

    def __call__(self, ev: PullEvent) -> None:
        if ev.kind == "resolved":
            self._progress.console.print(f"resolved {ev.digest} ({ev.message})")
        elif ev.kind in ("layer_started", "layer_progress", "layer_done", "layer_skipped"):
            task = self._task(ev)
            self._progress.update(task, completed=ev.done)  # type: ignore[arg-type]
            if ev.kind == "layer_skipped":
                label = f"{ev.digest[7:19]} (present)"
                self._progress.update(task, description=label)  # type: ignore[arg-type]

    def close(self) -> None:
        self._progress.stop()


def pull_command(
    ref: Annotated[str, typer.Argument(help="Image reference, e.g. python:3.12-slim.")],
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="Store under this name (default: last path component)."),
    ] = None,
    platform: Annotated[
        str | None, typer.Option("--platform", help="os/arch[/variant], e.g. linux/arm64.")
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    flatten: Annotated[
        bool, typer.Option("--flatten", help="Store the image as one flattened layer.")
    ] = False,
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="Registry user name.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the registry password from stdin.")
    ] = False,
    fsync: Annotated[bool, typer.Option(
        "--fsync/--no-fsync", help="Flush layers to disk before publishing them (survives a "
        "power loss; --no-fsync still survives a crash or kill).")] = True,
) -> None:
    """Pull an image from a registry into the local store."""
    with reported_errors():
        try:
            _pull(ref, name, platform, data_dir, config, quiet, flatten, username,
                  password_stdin, fsync)
        except RegistryError as e:
            fail(e.message, e.hint)
        except KeyboardInterrupt:
            fail("interrupted; downloaded bytes are kept, pull again to resume", code=130)


def _pull(
    ref: str,
    name: str | None,
    platform: str | None,
    data_dir: str | None,
    config: str | None,
    quiet: bool,
    flatten: bool,
    username: str | None,
    password_stdin: bool,
    fsync: bool = True,
) -> None:
    # The pull machinery (httpx, the registry client) loads only when a pull runs: every
    # other image command shares this module's import and starts faster without it.
    from imgbuilder.pull import pull_image
    from registry.auth import Credentials
    from registry.reference import parse_reference
    from registry.transport import RegistryConfig

    reference = parse_reference(ref)
    require_root("pulling an image (file owners, device nodes, trusted xattrs)")
    if password_stdin and not username:
        fail("--password-stdin needs --username")
    if username and not password_stdin:
        fail("--username needs --password-stdin (no passwords on the command line)")
    creds: dict[str, Credentials] = {}
    if username:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail("--password-stdin: no password on stdin")
        creds[reference.registry] = Credentials(username, password)
    insecure, mirrors = load_registry_settings(config)
    settings = RegistryConfig(
        insecure_registries=list(insecure), registry_mirrors=list(mirrors), credentials=creds
    )
    store = open_store(data_dir, config)
    show: _PlainProgress | _RichProgress | None = None
    if not quiet:
        show = _RichProgress() if sys.stderr.isatty() else _PlainProgress()
    try:
        rec = pull_image(store, reference, name=name, platform=platform, flatten=flatten,
                         registry_settings=settings, progress=show, sync=fsync)
    finally:
        if show is not None:
            show.close()
    if not quiet:
        typer.echo(f"pulled {rec.name}: {rec.reference} {rec.manifest_digest} ({rec.platform})")
