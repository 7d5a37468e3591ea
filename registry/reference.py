"""Image references, parsed and normalized the way Docker does (pure; no I/O).

Grammar (the distribution project's ``reference`` package)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component [ "/" path-component ]*
    domain     := host [ ":" port ]          host: DNS labels, "localhost" or "[IPv6]"
    path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := "sha256:" 64 lowercase hex digits

The first ``/``-separated component is a registry host only if it contains ``.`` or ``:``
or is ``localhost`` (Docker's rule); otherwise the name lives on Docker Hub, whose
canonical registry is ``docker.io``, whose single-component repositories live under
``library/``, and whose API endpoint is ``registry-1.docker.io``. With neither tag nor
digest the tag is ``latest``; with both, the digest decides what is pulled and the tag
is kept only for display.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import ReferenceError_

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?\Z"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z", re.ASCII)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-zA-Z=_-]+\Z")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Reference:
    """A normalized image reference.

    ``registry`` is the canonical host (``docker.io`` for Docker Hub), ``repository`` the
    full path (``library/python``), ``tag`` is ``None`` only when a digest was given alone.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def endpoint(self) -> str:
        """The host[:port] whose ``/v2/`` API serves this registry."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What goes into ``/v2/<repo>/manifests/<identifier>``: the digest if pinned."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def last_component(self) -> str:
        """The repository's last path component (``python`` for ``library/python``)."""
        return self.repository.rsplit("/", 1)[-1]

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_reference(s: str) -> Reference:
    """Parse and normalize ``s``; raise :class:`ReferenceError_` with the reason if invalid."""
    if not isinstance(s, str) or not s:
        raise ReferenceError_("invalid image reference: empty")
    original = s
    if any(c.isspace() for c in s):
        raise ReferenceError_(f"invalid image reference {original!r}: contains whitespace")
    if "://" in s:
        raise ReferenceError_(
            f"invalid image reference {original!r}: give host/repository, not a URL",
            hint="for example 127.0.0.1:5000/team/app:1.0",
        )

    digest: str | None = None
    if "@" in s:
        s, digest = s.split("@", 1)
        if not _DIGEST.match(digest):
            raise ReferenceError_(f"invalid image reference {original!r}: bad digest {digest!r}")
        if not digest.startswith("sha256:"):
            algo = digest.split(":", 1)[0]
            raise ReferenceError_(
                f"invalid image reference {original!r}: unsupported digest algorithm {algo!r}"
            )
        if not _SHA256.match(digest):
            raise ReferenceError_(
                f"invalid image reference {original!r}: a sha256 digest has 64 lowercase hex digits"
            )

    # A ':' after the last '/' starts the tag; one before it belongs to host:port.
    tag: str | None = None
    slash = s.rfind("/")
    colon = s.rfind(":")
    if colon > slash:
        s, tag = s[:colon], s[colon + 1 :]
        if not _TAG.match(tag):
            raise ReferenceError_(f"invalid image reference {original!r}: bad tag {tag!r}")

    if not s:
        raise ReferenceError_(f"invalid image reference {original!r}: missing repository name")
    registry, _, remainder = s.partition("/")
    if remainder and ("." in registry or ":" in registry or registry == "localhost"):
        if not _DOMAIN.match(registry):
            raise ReferenceError_(
                f"invalid image reference {original!r}: bad registry host {registry!r}"
            )
        path = remainder
    else:
        registry, path = DOCKER_HUB, s
    if registry.lower() in _HUB_ALIASES:
        registry = DOCKER_HUB
    elif registry != registry.lower() and not registry.startswith("["):
        registry = registry.lower()  # DNS is case-insensitive; keep one canonical form

    components = path.split("/")
    for comp in components:
        if not comp:
            raise ReferenceError_(f"invalid image reference {original!r}: empty path component")
        if comp != comp.lower() and _PATH_COMPONENT.match(comp.lower()):
            raise ReferenceError_(
                f"invalid image reference {original!r}: repository name must be lowercase"
            )
        if not _PATH_COMPONENT.match(comp):
            raise ReferenceError_(
                f"invalid image reference {original!r}: bad repository component {comp!r} "
                "(allowed: a-z 0-9 separated by . _ __ -)"
            )
    if registry == DOCKER_HUB and len(components) == 1:
        path = f"library/{path}"
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise ReferenceError_(
            f"invalid image reference {original!r}: name longer than {MAX_NAME_LENGTH} characters"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)
