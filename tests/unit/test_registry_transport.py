"""The auth handshake, redirects, retries and resumable blob streams, over httpx.MockTransport.

These run the real Transport and RegistryClient code; only the network is replaced.
"""

import hashlib
import json

import httpx
import pytest

from registry.auth import Credentials
from registry.client import RegistryClient
from registry.errors import (
    AuthError,
    DigestMismatchError,
    NotFoundError,
    RegistryError,
    UnreachableError,
)
from registry.manifest import Descriptor
from registry.reference import parse_reference
from registry.transport import RegistryConfig, is_loopback, retry_after_seconds

REG = "reg.example"
REF = parse_reference(f"{REG}/team/app:1")
BLOB = bytes(range(256)) * 400
DESC = Descriptor("application/vnd.oci.image.layer.v1.tar",
                  "sha256:" + hashlib.sha256(BLOB).hexdigest(), len(BLOB))


class Body(httpx.SyncByteStream):
    """A streamed body (``content=`` bodies are pre-read by httpx and cannot be iter_raw'd)."""

    def __init__(self, data, chunk=8192):
        self.data, self.chunk = data, chunk

    def __iter__(self):
        for i in range(0, len(self.data), self.chunk):
            yield self.data[i : i + self.chunk]


def ok(data, status=200, **kw):
    headers = kw.pop("headers", {})
    headers.setdefault("Content-Length", str(len(data)))
    return httpx.Response(status, stream=Body(data), headers=headers, **kw)


class Server:
    """A scripted registry: records requests, answers with ``handler``."""

    def __init__(self, handler):
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def client(self, **cfg):
        cfg.setdefault("environ", {})
        cfg.setdefault("docker_config", None)
        config = RegistryConfig(**cfg)
        if config.docker_config is None:
            from pathlib import Path
            config.docker_config = Path("/nonexistent/config.json")
        return RegistryClient(config, http_transport=httpx.MockTransport(self),
                              sleep=self.sleeps.append)

    def paths(self):
        return [(r.url.host, r.url.path) for r in self.requests]


def bearer_registry(valid_tokens, *, token_status=200):
    issued = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example":
            if token_status != 200:
                return httpx.Response(token_status)
            tok = f"T{len(issued) + 1}"
            issued.append((tok, dict(req.url.params), req.headers.get("Authorization")))
            return httpx.Response(200, json={"token": tok, "expires_in": 300})
        challenge = ('Bearer realm="https://auth.example/token",service="reg",'
                     'scope="repository:team/app:pull"')
        if req.headers.get("Authorization", "").removeprefix("Bearer ") not in valid_tokens:
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return ok(BLOB)

    return handler, issued


def test_anonymous_bearer_token_cached_per_scope():
    handler, issued = bearer_registry({"T1"})
    srv = Server(handler)
    with srv.client() as rc:
        assert b"".join(rc.stream_blob(REF, DESC)) == BLOB
        assert b"".join(rc.stream_blob(REF, DESC)) == BLOB
    assert len(issued) == 1, "the token is fetched once and reused"
    _tok, params, authz = issued[0]
    assert params == {"scope": "repository:team/app:pull", "service": "reg"}
    assert authz is None, "anonymous token request"
    assert all(r.url.scheme == "https" for r in srv.requests)


def test_token_request_carries_basic_credentials():
    handler, issued = bearer_registry({"T1"})
    srv = Server(handler)
    with srv.client(credentials={REG: Credentials("u", "p")}) as rc:
        b"".join(rc.stream_blob(REF, DESC))
    assert issued[0][2] == httpx.BasicAuth("u", "p")._auth_header


def test_token_refreshed_on_401():
    valid = {"T1"}
    handler, issued = bearer_registry(valid)
    srv = Server(handler)
    with srv.client() as rc:
        b"".join(rc.stream_blob(REF, DESC))
        valid.clear()
        valid.add("T2")  # the registry revoked T1
        assert b"".join(rc.stream_blob(REF, DESC)) == BLOB
    assert [t for t, _, _ in issued] == ["T1", "T2"]


def test_refused_token_names_registry():
    handler, _ = bearer_registry(set(), token_status=401)
    with Server(handler).client(credentials={REG: Credentials("u", "bad")}) as rc, \
            pytest.raises(AuthError, match=r"registry reg\.example refused the credentials"):
        b"".join(rc.stream_blob(REF, DESC))


def test_token_never_accepted_is_auth_error():
    handler, _ = bearer_registry(set())
    with Server(handler).client() as rc, pytest.raises(AuthError, match=r"reg\.example"):
        b"".join(rc.stream_blob(REF, DESC))


def basic_registry(user, password):
    good = httpx.BasicAuth(user, password)._auth_header

    def handler(req):
        if req.headers.get("Authorization") != good:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return ok(BLOB)

    return handler


def test_basic_auth():
    srv = Server(basic_registry("u", "p"))
    with srv.client(credentials={REG: Credentials("u", "p")}) as rc:
        assert b"".join(rc.stream_blob(REF, DESC)) == BLOB


def test_basic_auth_without_credentials_says_how():
    with Server(basic_registry("u", "p")).client() as rc, pytest.raises(AuthError) as exc:
        b"".join(rc.stream_blob(REF, DESC))
    assert "registry reg.example requires authentication" in exc.value.message
    assert "--password-stdin" in (exc.value.hint or "")


def test_basic_auth_wrong_password():
    with Server(basic_registry("u", "p")).client(
        credentials={REG: Credentials("u", "x")}
    ) as rc, pytest.raises(AuthError, match="refused the credentials"):
        b"".join(rc.stream_blob(REF, DESC))


def test_redirect_to_other_host_drops_authorization():
    good = httpx.BasicAuth("u", "p")._auth_header

    def handler(req):
        if req.url.host == "cdn.example":
            return ok(BLOB)
        if req.headers.get("Authorization") != good:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        if req.url.path.startswith("/v2/team/app/blobs/"):
            return httpx.Response(307, headers={"Location": "/storage/x"})  # same origin
        if req.url.path == "/storage/x":
            return httpx.Response(302, headers={"Location": "https://cdn.example/b?sig=1"})
        return httpx.Response(200)

    srv = Server(handler)
    with srv.client(credentials={REG: Credentials("u", "p")}) as rc:
        assert b"".join(rc.stream_blob(REF, DESC)) == BLOB
    by_path = {(r.url.host, r.url.path): r for r in srv.requests}
    assert by_path[(REG, "/storage/x")].headers.get("Authorization") == good
    assert "Authorization" not in by_path[("cdn.example", "/b")].headers


def test_retries_honor_retry_after():
    answers = iter([httpx.Response(503, headers={"Retry-After": "2"}),
                    httpx.Response(429, headers={"Retry-After": "1"}),
                    httpx.Response(502)])

    def handler(req):
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return next(answers, None) or ok(BLOB)

    srv = Server(handler)
    with srv.client() as rc:
        assert b"".join(rc.stream_blob(REF, DESC)) == BLOB
    assert srv.sleeps[:2] == [2.0, 1.0]
    assert len(srv.sleeps) == 3


def test_connection_errors_retried_then_unreachable():
    def handler(req):
        raise httpx.ConnectError("connection refused", request=req)

    srv = Server(handler)
    with srv.client(max_attempts=4) as rc, pytest.raises(UnreachableError) as exc:
        rc.resolve(REF)
    assert "registry reg.example is unreachable" in exc.value.message
    assert "add 'reg.example' to insecure_registries" in (exc.value.hint or "")
    assert len(srv.requests) == 3  # the ping tries at most 3 times


def test_persistent_5xx_is_unreachable():
    def handler(req):
        return httpx.Response(200) if req.url.path == "/v2/" else httpx.Response(500)

    srv = Server(handler)
    with srv.client(max_attempts=3) as rc, pytest.raises(UnreachableError, match="HTTP 500"):
        b"".join(rc.stream_blob(REF, DESC))


class Dropping(httpx.SyncByteStream):
    """A body that sends ``data`` and then fails like a dropped connection."""

    def __init__(self, data):
        self.data = data

    def __iter__(self):
        yield self.data
        raise httpx.RemoteProtocolError("peer closed connection")


@pytest.mark.parametrize("honor_range", [True, False])
def test_dropped_blob_resumes_with_range(honor_range):
    cut = 30_000

    def handler(req):
        if req.url.path == "/v2/":
            return httpx.Response(200)
        rng = req.headers.get("Range")
        if rng is None:
            return httpx.Response(200, stream=Dropping(BLOB[:cut]))
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        if not honor_range:
            return ok(BLOB)
        return ok(BLOB[start:], 206, headers={
            "Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"})

    srv = Server(handler)
    with srv.client() as rc:
        assert b"".join(rc.stream_blob(REF, DESC)) == BLOB
    ranges = [r.headers.get("Range") for r in srv.requests if "/blobs/" in r.url.path]
    assert ranges == [None, f"bytes={cut}-"]


def test_resume_from_offset_with_hasher():
    def handler(req):
        if req.url.path == "/v2/":
            return httpx.Response(200)
        start = int(req.headers["Range"].removeprefix("bytes=").rstrip("-"))
        return ok(BLOB[start:], 206, headers={
            "Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"})

    h = hashlib.sha256(BLOB[:1000])
    with Server(handler).client() as rc:
        assert b"".join(rc.stream_blob(REF, DESC, 1000, hasher=h)) == BLOB[1000:]
        bad = hashlib.sha256(b"x" * 1000)
        with pytest.raises(DigestMismatchError):
            b"".join(rc.stream_blob(REF, DESC, 1000, hasher=bad))


@pytest.mark.parametrize(("body", "reason"), [
    (BLOB[:-1] + b"\x00", "does not match its digest"),
    (BLOB + b"extra", "sent more than"),
])
def test_blob_verification(body, reason):
    def handler(req):
        return httpx.Response(200) if req.url.path == "/v2/" else ok(body)

    with Server(handler).client() as rc, pytest.raises(DigestMismatchError, match=reason):
        b"".join(rc.stream_blob(REF, DESC))


def test_short_blob_is_retried_then_fails():
    def handler(req):
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return ok(BLOB[:10], 200 if "Range" not in req.headers else 416)

    with Server(handler).client(max_attempts=2) as rc, pytest.raises(RegistryError):
        b"".join(rc.stream_blob(REF, DESC))


def test_manifest_not_found_and_pinned_digest_mismatch():
    manifest = json.dumps({"schemaVersion": 2, "manifests": []}).encode()

    def handler(req):
        if req.url.path == "/v2/":
            return httpx.Response(200)
        if req.url.path.endswith("/missing"):
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        return ok(manifest, headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})

    with Server(handler).client() as rc:
        with pytest.raises(NotFoundError, match="image team/app:missing not found on registry"):
            rc.resolve(f"{REG}/team/app:missing")
        pinned = f"{REG}/team/app@sha256:{'0' * 64}"
        with pytest.raises(DigestMismatchError, match="whose digest is"):
            rc.resolve(pinned)


def test_mirror_first_then_fallback():
    def handler(req):
        if req.url.host == "mirror.example":
            raise httpx.ConnectError("down", request=req)
        return httpx.Response(404 if req.url.path != "/v2/" else 200)

    srv = Server(handler)
    with srv.client(registry_mirrors=["https://mirror.example/"], max_attempts=1) as rc, \
            pytest.raises(NotFoundError, match=r"registry-1\.docker\.io"):
        rc.resolve("python:3")
    hosts = [h for h, _ in srv.paths()]
    assert hosts[0] == "mirror.example" and hosts[-1] == "registry-1.docker.io"


@pytest.mark.parametrize(("host", "loop"), [
    ("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost:80", True), ("[::1]:5000", True),
    ("::1", True), ("10.0.0.1:5000", False), ("localhost.example", False), ("ghcr.io", False),
])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_plain_http_only_for_loopback_or_insecure():
    def handler(req):
        if req.url.scheme == "https":
            raise httpx.ConnectError("tls", request=req)
        return ok(BLOB)

    srv = Server(handler)
    with srv.client(insecure_registries=["reg.example"]) as rc:
        assert b"".join(rc.stream_blob(REF, DESC)) == BLOB
    assert {r.url.scheme for r in srv.requests} == {"https", "http"}
    srv2 = Server(handler)
    with srv2.client(max_attempts=1) as rc, pytest.raises(UnreachableError):
        b"".join(rc.stream_blob(REF, DESC))
    assert {r.url.scheme for r in srv2.requests} == {"https"}


@pytest.mark.parametrize(("value", "expected"), [("3", 3.0), (None, 0.5), ("junk", 0.5),
                                                 ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0)])
def test_retry_after(value, expected):
    assert retry_after_seconds(value, 0.5) == expected
