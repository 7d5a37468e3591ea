"""Where the store lives and which registries are special, from flags, env and config file.

Precedence for the data directory: ``--data-dir`` > ``SANDKASTEN_DATA_DIR`` > the config
file's ``data_dir`` (file from ``--config`` or ``SANDKASTEN_CONFIG``) > /var/lib/sandkasten.
The config file is the daemon's YAML file (``sandkasten.yaml``); only the keys below are
read here, so the image commands work before the daemon's own config module is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from imgbuilder.errors import StoreError

DEFAULT_DATA_DIR = Path("/var/lib/sandkasten")


def config_file(config_path: str | Path | None) -> Path | None:
    """The config file to read: ``--config``, else ``SANDKASTEN_CONFIG``, else none."""
    value = config_path or os.environ.get("SANDKASTEN_CONFIG")
    return Path(value).expanduser() if value else None


def load_config(config_path: str | Path | None) -> dict[str, Any]:
    """The config file's top-level mapping ({} without a file); StoreError if unreadable."""
    path = config_file(config_path)
    if path is None:
        return {}
    import yaml  # only when there is a file: keeps the image commands' start fast

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise StoreError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as e:
        raise StoreError(f"cannot read config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise StoreError(f"config file {path} must hold a mapping of keys")
    return data


def resolve_data_dir(cli_value: str | Path | None, config_path: str | Path | None) -> Path:
    """The data directory by the precedence in the module docstring (absolute path)."""
    if cli_value:
        return Path(cli_value).expanduser().absolute()
    env = os.environ.get("SANDKASTEN_DATA_DIR")
    if env:
        return Path(env).expanduser().absolute()
    value = load_config(config_path).get("data_dir")
    if value:
        return Path(str(value)).expanduser().absolute()
    return DEFAULT_DATA_DIR


def load_registry_settings(config_path: str | Path | None) -> tuple[list[str], list[str]]:
    """``(insecure_registries, registry_mirrors)`` from the config file (top level)."""
    data = load_config(config_path)

    def strings(key: str) -> list[str]:
        value = data.get(key) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise StoreError(f"config key {key} must be a list of strings")
        return list(value)

    return strings("insecure_registries"), strings("registry_mirrors")
