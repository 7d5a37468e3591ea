"""Unix socket addresses for paths of any length.

``sockaddr_un.sun_path`` holds 108 bytes, so ``data_dir/sessions/<id>/runner.sock`` under a
long ``data_dir`` cannot be bound or connected by name. ``short_path`` yields a name for
the same socket that always fits: ``/proc/self/fd/<n>/runner.sock``, where ``<n>`` is an
``O_PATH`` descriptor of the socket's directory, held open only while the name is used.

Permissions are unchanged: the kernel resolves the magic link to the directory and then
walks it with the caller's own credentials, so the socket is exactly as reachable as by its
full path (the session directory is 0700 root, the socket 0600). Standard library only:
the fork server imports it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# sun_path is 108 bytes including the terminating NUL
MAX_ADDR = 107


@contextlib.contextmanager
def short_path(path: str) -> Iterator[str]:
    """A name for ``path`` that fits a Unix socket address; valid inside the ``with``.

    ``path`` itself when it fits; else a /proc/self/fd name through the directory (whose
    final component must itself be short, as ``runner.sock`` is). Thread-safe: the
    descriptor is this call's own until the block ends.
    """
    if len(os.fsencode(path)) <= MAX_ADDR:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)
