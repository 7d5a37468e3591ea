"""``sandkasten init``: a config with a random API key, the data directories, and the
default image (pulled from a registry when one is reachable, else built from the
distribution's packages with mmdebstrap)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

DEFAULT_IMAGE_NAME = "python"
DEFAULT_IMAGE_REF = "python:3.12-slim"
DEFAULT_DATA_DIR = "/var/lib/sandkasten"
DATA_SUBDIRS = ("images", "sessions", "workspaces", "run")

CONFIG_TEMPLATE = """\
# Sandkasten daemon configuration (written by `sandkasten init`; keys: docs/configuration.md)
listen: "{listen}"
api_key: "{api_key}"
data_dir: "{data_dir}"
default_image: "{image}"

defaults:
  cpu_limit: 1.0
  mem_limit_mb: 512
  pids_limit: 256
  network_mode: "none"
"""


def default_config_path() -> Path:
    """Where the daemon looks too: $SANDKASTEN_CONFIG, else ./sandkasten.yaml."""
    env = os.environ.get("SANDKASTEN_CONFIG")
    return Path(env) if env else Path("sandkasten.yaml")


def new_api_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def write_config(path: Path, *, listen: str, data_dir: str, image: str) -> str:
    """Write the config atomically with mode 0600 (it holds the API key); return the key.
    The file is created under a temporary name with 0600 from the start, so the key is
    never readable by others, not even for a moment."""
    key = new_api_key()
    text = CONFIG_TEMPLATE.format(listen=listen, api_key=key, data_dir=data_dir, image=image)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return key


def read_config(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    return data if isinstance(data, dict) else {}


def make_data_dirs(data_dir: Path) -> None:
    """The data directory (0700: it holds every session's files) and its subdirectories."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    for sub in DATA_SUBDIRS:
        (data_dir / sub).mkdir(exist_ok=True)


def registry_host(ref: str) -> str:
    """The host a reference is pulled from (Docker Hub names go to registry-1.docker.io)."""
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "registry-1.docker.io"


def reachable(host: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to the registry be opened? (no DNS or no route: False)."""
    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def image_present(data_dir: Path, name: str) -> bool:
    from imgbuilder.errors import ImageNotFoundError
    from imgbuilder.store import Store

    try:
        Store(data_dir).get_image(name)
    except ImageNotFoundError:
        return False
    return True


def pull(data_dir: Path, ref: str, name: str) -> None:
    from imgbuilder.pull import pull_image
    from imgbuilder.store import Store

    pull_image(Store(data_dir), ref, name=name)


def debian_suite() -> str:
    """The host's Debian/Ubuntu codename (the mirror apt already uses), else bookworm."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"') or "bookworm"
    except OSError:
        pass
    return "bookworm"


def bootstrap(data_dir: Path, name: str, say: Callable[[str], None]) -> None:
    """Build ``name`` from the distribution's packages (``imgbuilder bootstrap``: mmdebstrap,
    minbase + python3, streamed into the layer store) and record it."""
    from imgbuilder.bootstrap import bootstrap_image
    from imgbuilder.store import Store

    suite = debian_suite()
    say(f"building {name!r} with mmdebstrap ({suite}, minbase + python3); "
        "this takes a few minutes")
    store = Store(data_dir)
    with store.shared_lock():
        rec = bootstrap_image(store, name, suite=suite, packages=["python3"])
        store.write_image(rec)


def prepare_image(data_dir: Path, name: str, ref: str, say: Callable[[str], None],
                  *, offline: bool = False) -> str:
    """Make sure image ``name`` is in the store; return how: present, pulled, bootstrapped."""
    if image_present(data_dir, name):
        say(f"image {name!r} is already in the store")
        return "present"
    host = registry_host(ref)
    if not offline and reachable(host):
        say(f"pulling {ref} as {name!r} from {host}")
        try:
            pull(data_dir, ref, name)
            return "pulled"
        except Exception as e:
            say(f"pull failed ({e}); building the image from Debian packages instead")
    else:
        say(f"registry {host} is not reachable; building {name!r} from Debian packages")
    bootstrap(data_dir, name, say)
    return "bootstrapped"
