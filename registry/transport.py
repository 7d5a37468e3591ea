"""HTTP to registries: scheme choice, the auth handshake, retries, redirects, error mapping.

The handshake, as the distribution spec and go-containerregistry's ``transport`` do it:

1. Ping ``GET /v2/`` once per registry host. HTTPS always; plain HTTP only for loopback
   hosts (127.0.0.0/8, ::1, localhost) and hosts in ``insecure_registries``, which are
   tried over HTTPS without certificate checks first and then over HTTP.
2. A 401 on the ping carries ``WWW-Authenticate``: ``Basic`` → send the credentials on
   every request; ``Bearer realm=…,service=…`` → ask the realm for a token scoped to
   ``repository:<repo>:pull`` (with basic credentials if we have any, anonymously
   otherwise) and send ``Authorization: Bearer <token>``.
3. Tokens are cached per (host, scope) until shortly before they expire; a 401 on a later
   request drops the cached token, re-reads the challenge (which may name a new scope) and
   retries once; a second 401 is an :class:`AuthError` naming the registry.

Redirects (blob storage, CDNs) are followed here, not by httpx, so that the registry's
``Authorization`` header is sent to the registry's own origin only, never to another host.

Transient failures (connection errors, timeouts, 408/429/5xx) are retried with exponential
backoff and jitter, honouring ``Retry-After``; what still fails is an
:class:`UnreachableError`. Every httpx exception is translated here.
"""

from __future__ import annotations

import ipaddress
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from registry.auth import Challenge, Credentials, lookup_credentials, parse_challenges, scope_for
from registry.errors import AuthError, NotFoundError, RegistryError, UnreachableError

USER_AGENT = "sandkasten/0.1 (+https://github.com/sandkasten)"
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
MAX_REDIRECTS = 10


@dataclass
class RegistryConfig:
    """How to reach registries.

    ``insecure_registries``: hosts (``host`` or ``host:port``) allowed over plain HTTP or
    unverified TLS; loopback hosts always are. ``registry_mirrors``: hosts or URLs tried,
    in order, before Docker Hub for ``docker.io`` images. ``credentials``: explicit
    host → :class:`Credentials`, ahead of the environment and Docker's config.json.
    """

    insecure_registries: list[str] = field(default_factory=list)
    registry_mirrors: list[str] = field(default_factory=list)
    credentials: dict[str, Credentials] = field(default_factory=dict)
    docker_config: Path | None = None
    environ: dict[str, str] | None = None
    timeout: float = 30.0
    max_attempts: int = 5
    backoff: float = 0.25
    max_backoff: float = 8.0
    verify_tls: bool = True


def host_of(entry: str) -> str:
    """``https://mirror.example:5000/`` → ``mirror.example:5000``."""
    e = entry.strip()
    if "://" in e:
        e = urlsplit(e).netloc
    return e.rstrip("/").lower()


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost, with or without a port."""
    h = host
    if h.startswith("["):
        h = h[1:].split("]", 1)[0]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None, default: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return default


def distribution_error(resp: httpx.Response) -> str:
    """The first ``errors[].code: message`` of a distribution error body, if any."""
    try:
        doc = json.loads(resp.read())
        err = doc["errors"][0]
        return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
    except (ValueError, KeyError, IndexError, TypeError, httpx.HTTPError):
        return ""


class _Failed(UnreachableError):
    """Internal: every attempt failed; ``request`` re-raises it naming the registry."""


@dataclass
class _Token:
    value: str
    expires: float


class Transport:
    """One httpx connection pool shared by every registry; safe for concurrent blob streams.

    Concurrency: the caches below are plain dicts updated by single assignments (atomic
    under the GIL); two threads that miss at once both fetch a token and one wins, which
    costs a request but never sends a wrong credential.
    """

    def __init__(
        self,
        config: RegistryConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        http_transport: httpx.BaseTransport | None = None,
    ):
        """``http_transport`` replaces the network (``httpx.MockTransport`` in unit tests)."""
        self.config = config
        self._sleep = sleep
        timeout = httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0))
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        headers = {"User-Agent": USER_AGENT}
        # The verifying client loads the CA bundle (tens of ms): only made when an HTTPS
        # registry is actually contacted; loopback pulls never pay for it.
        self._http_args: dict[str, Any] = dict(
            timeout=timeout, limits=limits, headers=headers, verify=config.verify_tls,
            transport=http_transport,
        )
        self._http_verify: httpx.Client | None = None
        self._http_noverify = httpx.Client(
            timeout=timeout, limits=limits, headers=headers, verify=False,  # noqa: S501
            transport=http_transport,
        )
        self._insecure = {host_of(h) for h in config.insecure_registries}
        self._bases: dict[str, str] = {}
        self._challenge: dict[str, Challenge | None] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._creds: dict[str, Credentials | None] = {}

    @property
    def _http(self) -> httpx.Client:
        if self._http_verify is None:
            self._http_verify = httpx.Client(**self._http_args)
        return self._http_verify

    def close(self) -> None:
        if self._http_verify is not None:
            self._http_verify.close()
        self._http_noverify.close()

    # -- scheme and ping ---------------------------------------------------------------

    def insecure(self, host: str) -> bool:
        return is_loopback(host) or host in self._insecure or host.split(":")[0] in self._insecure

    def _client_for(self, url: str) -> httpx.Client:
        host = urlsplit(url).netloc.lower()
        return self._http_noverify if self.insecure(host) else self._http

    def base_url(self, host: str) -> str:
        """``scheme://host`` after a successful ping; raises UnreachableError."""
        if host in self._bases:
            return self._bases[host]
        schemes = ["https", "http"] if self.insecure(host) else ["https"]
        last: Exception | None = None
        for scheme in schemes:
            url = f"{scheme}://{host}/v2/"
            # An insecure host's HTTPS probe gets one try: a plain-HTTP server fails the
            # TLS handshake at once, and retrying it only delays the HTTP fallback.
            attempts = 1 if scheme != schemes[-1] else min(3, self.config.max_attempts)
            try:
                resp = self._send_with_retries("GET", url, {}, stream=False, attempts=attempts)
            except UnreachableError as e:
                last = e
                continue
            challenge = None
            if resp.status_code == 401:
                challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
                challenge = next((c for c in challenges if c.scheme == "bearer"), None) or next(
                    (c for c in challenges if c.scheme == "basic"), None
                )
            self._challenge[host] = challenge
            self._bases[host] = f"{scheme}://{host}"
            return self._bases[host]
        raise UnreachableError(f"registry {host} is unreachable ({last})",
                               hint=unreachable_hint(host, str(last), self.insecure(host)))

    # -- credentials and tokens --------------------------------------------------------

    def credentials(self, host: str) -> Credentials | None:
        if host not in self._creds:
            registry = host
            self._creds[host] = lookup_credentials(
                registry,
                self.config.credentials,
                environ=self.config.environ,
                config_path=self.config.docker_config,
            )
        return self._creds[host]

    def _fetch_token(self, host: str, challenge: Challenge, scope: str) -> _Token:
        realm = challenge.params.get("realm", "")
        realm_host = urlsplit(realm).netloc.lower()
        if not realm or (urlsplit(realm).scheme != "https" and not self.insecure(realm_host)):
            raise AuthError(f"registry {host} sent an unusable token realm {realm!r}")
        creds = self.credentials(host)
        params = {"scope": scope}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        client = self._client_for(realm)
        try:
            if creds and creds.identity_token:
                resp = client.post(
                    realm,
                    data={**params, "grant_type": "refresh_token", "client_id": "sandkasten",
                          "refresh_token": creds.identity_token},
                )
            else:
                headers = {"Authorization": creds.basic_header()} if creds else {}
                resp = client.get(realm, params=params, headers=headers, follow_redirects=True)
        except httpx.HTTPError as e:
            raise UnreachableError(
                f"token service of registry {host} is unreachable: {e}"
            ) from None
        if resp.status_code in (401, 403):
            who = f"user {creds.username!r}" if creds and creds.username else "anonymous access"
            raise AuthError(
                f"registry {host} refused the credentials ({who})",
                hint=f"check the password, or log in: docker login {host}",
            )
        if resp.status_code != 200:
            raise AuthError(f"token service of registry {host} answered HTTP {resp.status_code}")
        try:
            doc = resp.json()
            value = str(doc.get("token") or doc["access_token"])
            expires_in = float(doc.get("expires_in") or 60)
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"token service of registry {host} sent an unreadable token") from None
        return _Token(value, time.monotonic() + max(expires_in - 10, 5))

    def _authorization(self, host: str, scope: str, *, fresh: bool = False) -> str | None:
        challenge = self._challenge.get(host)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials(host)
            if creds is None or creds.identity_token:
                return None
            return creds.basic_header()
        if challenge.scheme == "bearer":
            key = (host, scope)
            tok = self._tokens.get(key)
            if fresh or tok is None or tok.expires <= time.monotonic():
                tok = self._fetch_token(host, challenge, scope)
                self._tokens[key] = tok
            return f"Bearer {tok.value}"
        return None

    # -- requests ----------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.max_backoff, self.config.backoff * (2**attempt))
        return delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto

    def _send_with_retries(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        stream: bool,
        attempts: int | None = None,
    ) -> httpx.Response:
        """Send, following redirects without leaking Authorization, retrying transient errors."""
        origin = urlsplit(url)[:2]
        last = ""
        attempts = attempts or self.config.max_attempts
        for attempt in range(attempts):
            target, hdrs = url, dict(headers)
            try:
                for _ in range(MAX_REDIRECTS + 1):
                    req = self._client_for(target).build_request(method, target, headers=hdrs)
                    resp = self._client_for(target).send(req, stream=stream)
                    if not resp.is_redirect:
                        break
                    location = resp.headers.get("Location", "")
                    resp.close()
                    target = urljoin(target, location)
                    if urlsplit(target)[:2] != origin:
                        # Another host (blob storage, CDN): it authenticates by the signed
                        # URL; the registry's credentials must never reach it.
                        hdrs.pop("Authorization", None)
                else:
                    raise UnreachableError(f"too many redirects from {urlsplit(url).netloc}")
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if attempt + 1 < attempts:
                    self._sleep(self._backoff(attempt))
                continue
            if resp.status_code in RETRY_STATUSES and attempt + 1 < self.config.max_attempts:
                wait = self._backoff(attempt)
                if resp.status_code in (429, 503):
                    wait = min(60.0, retry_after_seconds(resp.headers.get("Retry-After"), wait))
                last = f"HTTP {resp.status_code}"
                resp.close()
                self._sleep(wait)
                continue
            if resp.status_code in RETRY_STATUSES:
                last = f"HTTP {resp.status_code}"
                resp.close()
                break
            return resp
        raise _Failed(f"{last}, {attempts} attempt{'s' if attempts > 1 else ''}")

    def _send(
        self, host: str, method: str, url: str, headers: dict[str, str], *, stream: bool
    ) -> httpx.Response:
        try:
            return self._send_with_retries(method, url, headers, stream=stream)
        except _Failed as e:
            raise UnreachableError(f"registry {host} is unreachable ({e})") from None

    def request(
        self,
        host: str,
        repository: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        stream: bool = False,
        what: str = "",
    ) -> httpx.Response:
        """An authenticated request to ``host``'s ``/v2/`` API; non-2xx raise mapped errors.

        With ``stream=True`` the caller owns the response and must close it.
        """
        base = self.base_url(host)
        scope = scope_for(repository)
        url = f"{base}{path}"
        hdrs = dict(headers or {})
        auth = self._authorization(host, scope)
        if auth:
            hdrs["Authorization"] = auth
        resp = self._send(host, method, url, hdrs, stream=stream)
        if resp.status_code == 401:
            challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
            resp.close()
            challenge = next((c for c in challenges if c.scheme in ("bearer", "basic")), None)
            if challenge is not None:
                self._challenge[host] = challenge
                if challenge.scheme == "bearer" and challenge.params.get("scope"):
                    scope = challenge.params["scope"]
                auth = self._authorization(host, scope, fresh=True)
                if auth:
                    hdrs["Authorization"] = auth
                    resp = self._send(host, method, url, hdrs, stream=stream)
            if resp.status_code == 401:
                resp.close()
                raise self._auth_error(host, repository)
        if resp.status_code >= 400:
            try:
                raise self.map_status(resp, host, repository, what)
            finally:
                resp.close()
        return resp

    def _auth_error(self, host: str, repository: str) -> AuthError:
        creds = self.credentials(host)
        if creds is None:
            return AuthError(
                f"registry {host} requires authentication for {repository}",
                hint="pass --username and --password-stdin, set SANDKASTEN_REGISTRY_AUTH, "
                f"or run: docker login {host}",
            )
        return AuthError(
            f"registry {host} refused the credentials for {repository} (user {creds.username!r})",
            hint="check the user name and password",
        )

    def map_status(
        self, resp: httpx.Response, host: str, repository: str, what: str
    ) -> RegistryError:
        detail = distribution_error(resp)
        code = resp.status_code
        if code == 403:
            suffix = f" ({detail})" if detail else ""
            return AuthError(f"registry {host} denied access to {repository}{suffix}")
        if code == 404:
            return NotFoundError(
                f"{what or repository} not found on registry {host}",
                hint="check the repository name and tag",
            )
        return RegistryError(
            f"registry {host} answered HTTP {code} for {what or repository}"
            + (f": {detail}" if detail else "")
        )


def unreachable_hint(host: str, error: str, insecure: bool) -> str | None:
    """The fix to suggest when no endpoint of ``host`` answered, from the last error's text."""
    if "Name or service not known" in error or "name resolution" in error:
        return (f"{host!r} does not resolve: check the name and this machine's DNS; offline, "
                "use registry_mirrors, `imgbuilder import` or `imgbuilder bootstrap`")
    if not insecure:
        return f"for a plain-HTTP registry add {host!r} to insecure_registries in the config"
    return None
