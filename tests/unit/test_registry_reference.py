"""Reference parsing and normalization, as Docker does it."""

import pytest

from registry.errors import ReferenceError_
from registry.reference import parse_reference

D = "sha256:" + "ab" * 32

GOOD = [
    # input, registry, repository, tag, digest, endpoint
    ("python:3.12-slim", "docker.io", "library/python", "3.12-slim", None, "registry-1.docker.io"),
    ("python", "docker.io", "library/python", "latest", None, "registry-1.docker.io"),
    ("library/python", "docker.io", "library/python", "latest", None, "registry-1.docker.io"),
    ("jupyter/base-notebook:x", "docker.io", "jupyter/base-notebook", "x", None,
     "registry-1.docker.io"),
    ("docker.io/python", "docker.io", "library/python", "latest", None, "registry-1.docker.io"),
    ("index.docker.io/library/python:3", "docker.io", "library/python", "3", None,
     "registry-1.docker.io"),
    ("ghcr.io/owner/app:v1.2", "ghcr.io", "owner/app", "v1.2", None, "ghcr.io"),
    ("host:5000/a/b:tag", "host:5000", "a/b", "tag", None, "host:5000"),
    ("localhost/x", "localhost", "x", "latest", None, "localhost"),
    ("localhost:5000/x", "localhost:5000", "x", "latest", None, "localhost:5000"),
    ("127.0.0.1:5000/team/app", "127.0.0.1:5000", "team/app", "latest", None, "127.0.0.1:5000"),
    ("[::1]:5000/app:1", "[::1]:5000", "app", "1", None, "[::1]:5000"),
    (f"alpine@{D}", "docker.io", "library/alpine", None, D, "registry-1.docker.io"),
    (f"alpine:3.19@{D}", "docker.io", "library/alpine", "3.19", D, "registry-1.docker.io"),
    (f"quay.io/a/b:t@{D}", "quay.io", "a/b", "t", D, "quay.io"),
    ("Registry.Example.COM/app", "registry.example.com", "app", "latest", None,
     "registry.example.com"),
    ("a/b/c/d_e__f-g.h:T_1.x-y", "docker.io", "a/b/c/d_e__f-g.h", "T_1.x-y", None,
     "registry-1.docker.io"),
]


@pytest.mark.parametrize(("s", "registry", "repo", "tag", "digest", "endpoint"), GOOD)
def test_good_references(s, registry, repo, tag, digest, endpoint):
    ref = parse_reference(s)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)
    assert ref.endpoint == endpoint
    # the canonical string parses to the same reference
    assert parse_reference(str(ref)) == ref


BAD = [
    ("", "empty"),
    ("Python", "lowercase"),
    ("docker.io/Library/python", "lowercase"),
    ("python:", "bad tag"),
    ("python:-x", "bad tag"),
    ("python:" + "t" * 129, "bad tag"),
    ("python@sha256:abc", "64 lowercase hex"),
    ("python@sha256:" + "AB" * 32, "64 lowercase hex"),
    ("python@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("python@", "bad digest"),
    ("a//b", "empty path component"),
    ("/python", "empty path component"),
    ("python/", "empty path component"),
    ("a/b_", "bad repository component"),
    ("a/-b", "bad repository component"),
    ("a/b..c", "bad repository component"),
    ("py thon", "whitespace"),
    ("https://ghcr.io/a/b", "not a URL"),
    ("host:port/x", "bad registry host"),
    ("-host.io/x", "bad registry host"),
    ("a/" + "b" * 260, "longer than 255"),
]


@pytest.mark.parametrize(("s", "reason"), BAD)
def test_bad_references(s, reason):
    with pytest.raises(ReferenceError_) as exc:
        parse_reference(s)
    assert reason in str(exc.value)
    assert "\n" not in str(exc.value)


def test_identifier_and_last_component():
    ref = parse_reference(f"ghcr.io/org/tools/app:1@{D}")
    assert ref.identifier == D
    assert ref.last_component == "app"
    assert ref.name == "ghcr.io/org/tools/app"
    assert parse_reference("python").identifier == "latest"
