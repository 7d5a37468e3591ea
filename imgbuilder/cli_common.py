"""Shared pieces of the image commands: options, the store, and one-line errors.

Every command reports failure the same way: ``error: MESSAGE`` and optionally
``hint: HINT`` on stderr, exit status 1, never a traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from imgbuilder.errors import ImageError
from imgbuilder.settings import resolve_data_dir
from imgbuilder.store import Store

DataDirOption = Annotated[
    str | None,
    typer.Option("--data-dir", help="Data directory (default: $SANDKASTEN_DATA_DIR, the "
                 "config file's data_dir, else /var/lib/sandkasten).", show_default=False),
]
ConfigOption = Annotated[
    str | None,
    typer.Option("--config", help="Config file (default: $SANDKASTEN_CONFIG).",
                 show_default=False),
]

T = TypeVar("T")


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    """Print ``error: …`` (and ``hint: …``) on stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    raise typer.Exit(code)


def require_root(what: str) -> None:
    """Exit with a clear message unless running as root (mount, chown, device nodes)."""
    if os.geteuid() != 0:
        fail(f"{what} needs root", hint="run it with sudo")


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the errors a command can meet into one ``error:`` line and exit status 1."""
    try:
        yield
    except typer.Exit:
        raise
    except ImageError as e:
        fail(e.message, e.hint)
    except KeyboardInterrupt:
        fail("interrupted")
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            fail(f"disk full: {e.filename or ''}".rstrip(": "),
                 hint="free space in the data directory, or run `imgbuilder prune`")
        if e.errno in (errno.EACCES, errno.EPERM):
            fail(f"permission denied: {e.filename or e.strerror}", hint="run it with sudo")
        if e.errno == errno.ENOENT and e.filename:
            fail(f"no such file or directory: {e.filename}")
        fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except Exception as e:
        if os.environ.get("SANDKASTEN_DEBUG"):
            raise
        fail(f"unexpected {type(e).__name__}: {e}",
             hint="this is a bug; run again with SANDKASTEN_DEBUG=1 for a traceback")


def errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator form of :func:`reported_errors` for typer commands."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        with reported_errors():
            return fn(*args, **kwargs)
        raise AssertionError("unreachable")

    return wrapper


def open_store(data_dir: str | None, config: str | None) -> Store:
    """The store at the resolved data directory (created if missing)."""
    return Store(resolve_data_dir(data_dir, config))


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def data_dir_path(data_dir: str | None, config: str | None) -> Path:
    return resolve_data_dir(data_dir, config)
