"""The daemon's configuration: ``sandkasten.yaml`` plus ``SANDKASTEN_*`` environment variables.

Precedence, highest first: environment variables, the YAML file, the defaults below.
Nested keys take ``__`` in their variable name (``SANDKASTEN_DEFAULTS__MEM_LIMIT_MB``); the
short names of the original Go daemon (``SANDKASTEN_MEM_LIMIT_MB``, ``SANDKASTEN_SECCOMP``, …)
are accepted too. Lists in variables are comma-separated or JSON.

Guarantee: :func:`load_config` returns a fully validated :class:`Config` or raises one
:class:`~sandkasten.errors.ConfigError` naming the key and its source, before anything starts.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from sandkasten.errors import ConfigError

ENV_PREFIX = "SANDKASTEN_"
CONFIG_ENV = "SANDKASTEN_CONFIG"
DEFAULT_DATA_DIR = Path("/var/lib/sandkasten")

# The Go daemon's flat variable names, kept so its documented environment keeps working.
LEGACY_ENV = {
    "SANDKASTEN_CPU_LIMIT": ("defaults", "cpu_limit"),
    "SANDKASTEN_MEM_LIMIT_MB": ("defaults", "mem_limit_mb"),
    "SANDKASTEN_PIDS_LIMIT": ("defaults", "pids_limit"),
    "SANDKASTEN_MAX_EXEC_TIMEOUT_MS": ("defaults", "max_exec_timeout_ms"),
    "SANDKASTEN_NETWORK_MODE": ("defaults", "network_mode"),
    "SANDKASTEN_SECCOMP": ("security", "seccomp"),
}


_ENVIRON: ContextVar[dict[str, str] | None] = ContextVar("sandkasten_environ", default=None)


class _VettedEnvSource(EnvSettingsSource):
    """Reads the variables :func:`load_config` vetted instead of the live ``os.environ``."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        return parse_env_vars(
            os.environ if env is None else env,
            self.case_sensitive,
            self.env_ignore_empty,
            self.env_parse_none_str,
        )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Defaults(_Section):
    """Limits and behaviour every session gets unless its create request says otherwise."""

    cpu_limit: float = Field(default=1.0, gt=0, le=1024, description="CPU cores per session")
    mem_limit_mb: int = Field(default=512, gt=0, description="memory limit per session, MiB")
    pids_limit: int = Field(default=256, gt=0, description="maximum processes per session")
    network_mode: Literal["none"] = "none"
    max_exec_timeout_ms: int = Field(default=120_000, gt=0, description="cap on any exec's timeout")
    exec_mode: Literal["stateful", "stateless"] = "stateful"
    shell_prefer: list[str] = Field(default_factory=lambda: ["bash", "sh"], min_length=1)
    readonly_rootfs: bool = False


class WorkspaceSettings(_Section):
    enabled: bool = True
    persist_by_default: bool = False


class PoolSettings(_Section):
    enabled: bool = False
    images: dict[str, int] = Field(default_factory=dict)

    @field_validator("images")
    @classmethod
    def _sizes(cls, v: dict[str, int]) -> dict[str, int]:
        for name, n in v.items():
            if not 0 <= n <= 256:
                raise ValueError(f"pool size for {name!r} must be between 0 and 256, got {n}")
        return v


USERNS_SIZE = 65536  # sandbox ids 0..65535; runtime.linux.userns.SIZE
USERNS_DEFAULT_BASE = 0x70000000  # 1879048192: above subuid/nspawn ranges (docs/security.md)


class SecuritySettings(_Section):
    seccomp: Literal["off", "mvp", "strict"] = "mvp"
    user_namespace: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="run sandboxes in a user namespace: auto (where the kernel and the data "
                    "dir's filesystem allow), on (refuse to start otherwise), off")
    userns_base: int = Field(
        default=USERNS_DEFAULT_BASE,
        description="host uid/gid that sandbox id 0 maps to; sandbox ids 0..65535 map to "
                    "userns_base..userns_base+65535")

    @field_validator("user_namespace", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: object) -> object:
        # YAML 1.1 reads an unquoted on/off as a boolean: take it as the word written
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("seccomp", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        # ``seccomp: off`` unquoted is YAML's false; there is no "on" profile to mean
        return "off" if v is False else v

    @field_validator("userns_base")
    @classmethod
    def _userns_base(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"must be above 0 (0 would map sandbox root to host root), got {v}")
        if v + USERNS_SIZE >= 2**32 - 1:
            raise ValueError(f"{v} + {USERNS_SIZE} must stay below 4294967295 "
                             "(the invalid uid)")
        return v


class Config(BaseSettings):
    """Every key of ``sandkasten.yaml``; see docs/configuration.md for each one."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    listen: str = "127.0.0.1:8080"
    api_key: str = ""
    data_dir: Path = DEFAULT_DATA_DIR
    db_path: Path | None = None
    default_image: str = "python"
    allowed_images: list[str] = Field(default_factory=list)
    session_ttl_seconds: int = Field(default=1800, gt=0)
    max_sessions: int = Field(default=0, ge=0, description="0 = no limit")
    defaults: Defaults = Field(default_factory=Defaults)
    workspace: WorkspaceSettings = Field(default_factory=WorkspaceSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    insecure_registries: list[str] = Field(default_factory=list)
    registry_mirrors: list[str] = Field(default_factory=list)
    keep_sessions_on_shutdown: bool = False
    allow_unlimited: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; variables must win over it.
        return (_VettedEnvSource(settings_cls), init_settings)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, port = split_listen(v)
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535 in {v!r}")
        if not host:
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        return v

    @field_validator("data_dir", "db_path")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            v = Path.cwd() / v
        return v

    @field_validator("default_image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    # ---- derived values -------------------------------------------------------------------
    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def database_path(self) -> Path:
        return self.db_path or self.data_dir / "sandkasten.db"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def check_serving(self) -> None:
        """Raise ConfigError when this config must not be served: a non-loopback ``listen``
        with an empty ``api_key`` would hand root-run sandboxes to anyone on the network.
        ``create_app`` and the CLI's start-up both call this, so no entry point skips it."""
        if not self.api_key and not self.is_loopback():
            raise ConfigError(
                f"refusing to listen on {self.listen} without an api_key "
                "(listen is not a loopback address and api_key is empty)",
                hint="set api_key in sandkasten.yaml (or SANDKASTEN_API_KEY), "
                "or listen on 127.0.0.1",
            )


def split_listen(v: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ("127.0.0.1", 8080); ``"[::1]:80"`` and ``":8080"`` work too."""
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {v!r}")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (":8080" means every address, as in Go)
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {path}", hint="create it as in docs/configuration.md"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"permission denied: cannot read config file {path}",
            hint=f"run it with sudo: sudo sandkasten --config {path}",
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Variables pydantic-settings does not read: legacy flat names and comma lists."""
    out: dict[str, Any] = {}
    for var, (section, key) in LEGACY_ENV.items():
        if var in environ:
            out.setdefault(section, {})[key] = environ[var]
    return out


def _split_list(raw: str) -> str:
    """Comma-separated lists become JSON, the form pydantic-settings reads for list fields."""
    raw = raw.strip()
    if raw.startswith("["):
        return raw
    return json.dumps([s.strip() for s in raw.split(",") if s.strip()])


_LIST_VARS = (
    "SANDKASTEN_ALLOWED_IMAGES",
    "SANDKASTEN_INSECURE_REGISTRIES",
    "SANDKASTEN_REGISTRY_MIRRORS",
    "SANDKASTEN_DEFAULTS__SHELL_PREFER",
)


def _key_of(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not isinstance(p, int)) or "(top level)"


def load_config(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read ``path`` (or ``$SANDKASTEN_CONFIG``; none means defaults) and the environment."""
    env = dict(os.environ if environ is None else environ)
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    data = _read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "defaults"

    legacy = _env_overrides(env)
    for section, values in legacy.items():
        base = data.get(section)
        merged = dict(base) if isinstance(base, dict) else {}
        merged.update(values)
        data[section] = merged
    scoped = {k: v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)}
    for var in _LIST_VARS:
        if var in scoped:
            scoped[var] = _split_list(scoped[var])

    token = _ENVIRON.set(scoped)
    try:
        return Config(**data)
    except PydanticValidationError as e:
        err = e.errors()[0]
        key = _key_of(err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        var = ENV_PREFIX + key.upper().replace(".", "__")
        origin = f"environment {var}" if var in scoped else source
        raise ConfigError(
            f"config key {key!r} ({origin}): {msg}",
            hint="see docs/configuration.md for every key and its allowed values",
        ) from None
    finally:
        _ENVIRON.reset(token)
