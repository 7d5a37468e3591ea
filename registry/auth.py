"""Registry credentials and the challenge/token handshake's pure parts.

Where credentials come from, first match wins, per registry host:

1. explicit ``Credentials`` given to :class:`RegistryConfig` (``--username`` and
   ``--password-stdin`` on the command line);
2. the environment variable ``SANDKASTEN_REGISTRY_AUTH``, in one of two forms::

       SANDKASTEN_REGISTRY_AUTH='{"ghcr.io": {"username": "u", "password": "p"},
                                  "127.0.0.1:5000": {"auth": "<base64 user:pass>"}}'
       SANDKASTEN_REGISTRY_AUTH='ghcr.io=u:p,127.0.0.1:5000=bob:secret'

   (JSON is the form to use when a password contains ``,`` or ``=``; in the short form the
   password is everything after the first ``:``);
3. Docker's ``config.json`` (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``):
   ``credHelpers[host]``, then ``auths[host].auth`` (base64 ``user:password``) or
   ``identitytoken``, then ``credsStore``; helpers are run as ``docker-credential-<x> get``
   with the server on stdin, as Docker does;
4. none: anonymous (public images on Docker Hub, ghcr.io, quay.io still need a token,
   which the handshake obtains without credentials).

Docker Hub's config key is ``https://index.docker.io/v1/``; that and the other spellings
(``docker.io``, ``index.docker.io``, ``registry-1.docker.io``, with or without scheme)
all name the same registry here.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from registry.errors import AuthError
from registry.reference import DOCKER_HUB

ENV_VAR = "SANDKASTEN_REGISTRY_AUTH"
_HUB_KEYS = (
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
    "https://registry-1.docker.io",
    "https://docker.io",
)


@dataclass(frozen=True)
class Credentials:
    """A user name and password, or an identity (refresh) token when ``username`` is empty."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str]


# -- WWW-Authenticate parsing (RFC 7235) ---------------------------------------------------


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t":
        i += 1
    return i


def _token(s: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(s) and s[j] not in ' \t,="':
        j += 1
    return s[i:j], j


def _quoted(s: str, i: int) -> tuple[str, int]:
    # s[i] == '"'; backslash escapes the next character (quoted-pair).
    out: list[str] = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i  # unterminated: take what there is


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into challenges.

    Handles several challenges in one header, quoted values containing commas (scopes like
    ``repository:a/b:pull,push``), escaped quotes and unquoted values; parameter names are
    lower-cased. Never raises: a malformed tail is ignored.
    """
    out: list[Challenge] = []
    i = 0
    n = len(header)
    current: Challenge | None = None
    while i < n:
        i = _skip_ws(header, i)
        if i < n and header[i] == ",":
            i += 1
            continue
        word, j = _token(header, i)
        if not word:
            i = j + 1
            continue
        k = _skip_ws(header, j)
        if k < n and header[k] == "=" and current is not None and not header.startswith("==", k):
            # name=value pair of the current challenge
            k = _skip_ws(header, k + 1)
            if k < n and header[k] == '"':
                value, i = _quoted(header, k)
            else:
                value, i = _token(header, k)
            current.params[word.lower()] = value
        else:
            current = Challenge(word.lower(), {})
            out.append(current)
            i = j
    return out


def scope_for(repository: str, actions: str = "pull") -> str:
    """The token scope for pulling from ``repository``."""
    return f"repository:{repository}:{actions}"


# -- credential sources ---------------------------------------------------------------------


def _config_keys(registry: str) -> tuple[str, ...]:
    if registry == DOCKER_HUB:
        return _HUB_KEYS
    return (registry, f"https://{registry}", f"http://{registry}")


def _normalize_key(key: str) -> str:
    k = key.strip()
    for prefix in ("https://", "http://"):
        if k.startswith(prefix):
            k = k[len(prefix) :]
    k = k.split("/", 1)[0].lower()
    return DOCKER_HUB if k in {"index.docker.io", "registry-1.docker.io", "docker.io"} else k


def _decode_auth(value: str, where: str) -> Credentials:
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError(f"invalid base64 'auth' entry in {where}") from None
    if not sep:
        raise AuthError(f"'auth' entry in {where} is not base64 of user:password")
    return Credentials(user, password)


def parse_env_auth(value: str) -> dict[str, Credentials]:
    """Parse ``SANDKASTEN_REGISTRY_AUTH`` (JSON or ``host=user:pass,...``) into host → creds."""
    value = value.strip()
    out: dict[str, Credentials] = {}
    if not value:
        return out
    if value.startswith("{"):
        try:
            doc = json.loads(value)
        except ValueError as e:
            raise AuthError(f"{ENV_VAR} is not valid JSON: {e}") from None
        if isinstance(doc, dict) and isinstance(doc.get("auths"), dict):
            doc = doc["auths"]  # a whole docker config.json pasted in
        if not isinstance(doc, dict):
            raise AuthError(f"{ENV_VAR} must be a JSON object of host → credentials")
        for host, entry in doc.items():
            if not isinstance(entry, dict):
                raise AuthError(f"{ENV_VAR}: entry for {host!r} must be an object")
            if entry.get("auth"):
                creds = _decode_auth(str(entry["auth"]), ENV_VAR)
            elif "username" in entry and "password" in entry:
                creds = Credentials(str(entry["username"]), str(entry["password"]))
            else:
                raise AuthError(f"{ENV_VAR}: entry for {host!r} needs username and password")
            out[_normalize_key(host)] = creds
        return out
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, userpass = item.partition("=")
        user, sep2, password = userpass.partition(":")
        if not sep or not sep2 or not host or not user:
            raise AuthError(f"{ENV_VAR}: expected host=user:password, got {host or item!r}")
        out[_normalize_key(host)] = Credentials(user, password)
    return out


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def run_credential_helper(helper: str, server: str) -> Credentials | None:
    """``docker-credential-<helper> get``: None if it has nothing for ``server``."""
    binary = f"docker-credential-{helper}"
    path = shutil.which(binary)
    if path is None:
        raise AuthError(
            f"credential helper {binary} (from Docker's config.json) is not on PATH",
            hint="install it, or remove credsStore/credHelpers from the config",
        )
    try:
        proc = subprocess.run(
            [path, "get"], input=server.encode(), capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AuthError(f"credential helper {binary} failed: {e}") from None
    if proc.returncode != 0:
        msg = (proc.stdout or proc.stderr).decode(errors="replace").strip()
        if "credentials not found" in msg.lower():
            return None
        raise AuthError(f"credential helper {binary} failed: {msg or proc.returncode}")
    try:
        doc = json.loads(proc.stdout)
        user, secret = str(doc.get("Username", "")), str(doc["Secret"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise AuthError(f"credential helper {binary} returned unreadable output") from None
    if user == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(user, secret)


def from_docker_config(registry: str, doc: Mapping[str, object]) -> Credentials | None:
    """Credentials for ``registry`` from a parsed Docker config.json, running helpers."""
    keys = _config_keys(registry)
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key in keys:
            if isinstance(helpers.get(key), str):
                return run_credential_helper(helpers[key], key)
    auths = doc.get("auths")
    if isinstance(auths, dict):
        entries = {_normalize_key(k): v for k, v in auths.items() if isinstance(v, dict)}
        entry = entries.get(_normalize_key(registry))
        if entry:
            if entry.get("identitytoken"):
                return Credentials(identity_token=str(entry["identitytoken"]))
            if entry.get("auth"):
                return _decode_auth(str(entry["auth"]), "Docker config.json")
            if entry.get("username") and entry.get("password"):
                return Credentials(str(entry["username"]), str(entry["password"]))
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        return run_credential_helper(store, keys[0])
    return None


def lookup_credentials(
    registry: str,
    explicit: Mapping[str, Credentials] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Credentials | None:
    """The credentials for ``registry`` from the sources above, or None for anonymous."""
    registry = _normalize_key(registry)
    if explicit:
        for host, creds in explicit.items():
            if _normalize_key(host) == registry:
                return creds
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        found = parse_env_auth(env[ENV_VAR]).get(registry)
        if found:
            return found
    path = config_path or docker_config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuthError(f"cannot read {path}: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise AuthError(f"{path} is not valid JSON: {e}") from None
    return from_docker_config(registry, doc) if isinstance(doc, dict) else None
