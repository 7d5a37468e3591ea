"""Challenge parsing and credential sources (env, config.json, credential helpers)."""

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from registry.auth import (
    Challenge,
    Credentials,
    lookup_credentials,
    parse_challenges,
    parse_env_auth,
)
from registry.errors import AuthError


@pytest.mark.parametrize(("header", "expected"), [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/python:pull"',
     [Challenge("bearer", {"realm": "https://auth.docker.io/token",
                           "service": "registry.docker.io",
                           "scope": "repository:library/python:pull"})]),
    ('Basic realm="sandkasten-tests"', [Challenge("basic", {"realm": "sandkasten-tests"})]),
    # a scope with a comma inside quotes, spaces around separators
    ('Bearer realm="https://r/t", scope="repository:a/b:pull,push" , service=reg',
     [Challenge("bearer", {"realm": "https://r/t", "scope": "repository:a/b:pull,push",
                           "service": "reg"})]),
    # two challenges in one header, mixed case scheme and names
    ('Basic realm="x", BEARER Realm="https://t", Service="s"',
     [Challenge("basic", {"realm": "x"}), Challenge("bearer", {"realm": "https://t",
                                                              "service": "s"})]),
    # escaped quote inside a quoted string
    (r'Bearer realm="https://t",error="a \"b\" c"',
     [Challenge("bearer", {"realm": "https://t", "error": 'a "b" c'})]),
    ("", []),
    ("Negotiate", [Challenge("negotiate", {})]),
])
def test_parse_challenges(header, expected):
    assert parse_challenges(header) == expected


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@pytest.mark.parametrize(("value", "host", "expected"), [
    ('{"ghcr.io": {"username": "u", "password": "p,=:x"}}', "ghcr.io", Credentials("u", "p,=:x")),
    (json.dumps({"127.0.0.1:5000": {"auth": b64("bob:pa:ss")}}), "127.0.0.1:5000",
     Credentials("bob", "pa:ss")),
    (json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:pw")}}}),
     "docker.io", Credentials("hub", "pw")),
    ("ghcr.io=u:p, 127.0.0.1:5000=bob:se:cret", "127.0.0.1:5000", Credentials("bob", "se:cret")),
    ("ghcr.io=u:p", "GHCR.io", Credentials("u", "p")),
    ("docker.io=me:pw", "registry-1.docker.io", Credentials("me", "pw")),
])
def test_env_auth(value, host, expected):
    assert lookup_credentials(host, environ={"SANDKASTEN_REGISTRY_AUTH": value},
                              config_path=Path("/nonexistent/config.json")) == expected


@pytest.mark.parametrize(("value", "reason"), [
    ("{bad json", "not valid JSON"),
    ('{"h": {"user": "x"}}', "needs username and password"),
    ('{"h": {"auth": "!!!"}}', "invalid base64"),
    ("ghcr.io", "expected host=user:password"),
    ("ghcr.io=nopassword", "expected host=user:password"),
])
def test_env_auth_rejects(value, reason):
    with pytest.raises(AuthError, match=reason):
        parse_env_auth(value)


def test_credentials_repr_hides_password():
    assert "s3cret" not in repr(Credentials("u", "s3cret"))


@pytest.fixture
def docker_config(tmp_path):
    def write(doc):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(doc))
        return path
    return write


def test_config_auths(docker_config):
    path = docker_config({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
        "http://127.0.0.1:5000": {"auth": b64("tester:s3cret")},
        "ghcr.io": {"identitytoken": "tok"},
    }})
    assert lookup_credentials("docker.io", environ={}, config_path=path) == Credentials("hub", "pw")
    assert lookup_credentials("127.0.0.1:5000", environ={}, config_path=path) == Credentials(
        "tester", "s3cret")
    assert lookup_credentials("ghcr.io", environ={}, config_path=path) == Credentials(
        identity_token="tok")
    assert lookup_credentials("quay.io", environ={}, config_path=path) is None


def test_explicit_beats_env_beats_config(docker_config):
    path = docker_config({"auths": {"h:1": {"auth": b64("cfg:1")}}})
    env = {"SANDKASTEN_REGISTRY_AUTH": "h:1=env:2"}
    assert lookup_credentials("h:1", environ={}, config_path=path) == Credentials("cfg", "1")
    assert lookup_credentials("h:1", environ=env, config_path=path) == Credentials("env", "2")
    assert lookup_credentials("h:1", {"h:1": Credentials("cli", "3")}, environ=env,
                              config_path=path) == Credentials("cli", "3")


def test_missing_config_is_anonymous(tmp_path):
    assert lookup_credentials("h", environ={}, config_path=tmp_path / "none.json") is None


def test_broken_config_is_clear(docker_config):
    path = docker_config({})
    path.write_text("{not json")
    with pytest.raises(AuthError, match="not valid JSON"):
        lookup_credentials("h", environ={}, config_path=path)


@pytest.fixture
def helper_on_path(tmp_path, monkeypatch):
    """A real docker-credential-test executable that logs its stdin and answers per host."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    script = bindir / "docker-credential-test"
    script.write_text(f"""#!/bin/sh
[ "$1" = get ] || exit 3
read server
echo "$server" >> {log}
case "$server" in
  reg.example:5000) echo '{{"ServerURL":"x","Username":"helper-user","Secret":"helper-pw"}}';;
  tok.example) echo '{{"Username":"<token>","Secret":"refresh"}}';;
  broken.example) echo 'oops'; exit 0;;
  *) echo "credentials not found in native keychain"; exit 1;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log


def test_cred_helpers_and_store(docker_config, helper_on_path):
    path = docker_config({"credHelpers": {"reg.example:5000": "test"}, "credsStore": "test"})
    assert lookup_credentials("reg.example:5000", environ={}, config_path=path) == Credentials(
        "helper-user", "helper-pw")
    assert lookup_credentials("tok.example", environ={}, config_path=path) == Credentials(
        identity_token="refresh")
    assert lookup_credentials("other.example", environ={}, config_path=path) is None
    with pytest.raises(AuthError, match="unreadable output"):
        lookup_credentials("broken.example", environ={}, config_path=path)
    assert helper_on_path.read_text().split() == [
        "reg.example:5000", "tok.example", "other.example", "broken.example"]


def test_missing_helper_is_clear(docker_config):
    path = docker_config({"credsStore": "does-not-exist-xyz"})
    with pytest.raises(AuthError, match="docker-credential-does-not-exist-xyz"):
        lookup_credentials("h", environ={}, config_path=path)
