"""Which base images a model's build may use: image references, normalised, against the
operator's allow-list ``EASEML_ALLOWED_IMAGES``.

A reference is normalised as Docker does (``python:3.11`` is
``docker.io/library/python:3.11``; no tag means ``:latest`` unless a digest is pinned).
The list holds glob patterns of normalised references (``*`` also matches ``/``); a
pattern without tag or digest matches every tag and digest of its repository. An image
that matches is pulled (by digest when the Dockerfile pins one) with the worker's own
Docker credentials. An image that matches no pattern may still be used when it is already
on the worker and the operator put it there (the default, an empty list, means exactly
that); the runner's own model images are never a base.

>>> normalize("python:3.11-slim")
'docker.io/library/python:3.11-slim'
>>> normalize("ghcr.io/acme/tools")
'ghcr.io/acme/tools:latest'
>>> AllowedImages.parse("docker.io/library/python:3.*,ghcr.io/acme/*").allows("python:3.11")
True
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_ID = re.compile(r"^(?:sha256:)?[0-9a-f]{12,64}$")


class BadReference(ValueError):
    pass


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def pull_args(self) -> tuple[str, str]:
        """(repository, tag-or-digest) for the daemon's pull."""
        return self.name, (self.digest or self.tag or "latest")


def parse_reference(ref: str) -> Reference:
    """Parse an image reference (Docker's grammar); raises :class:`BadReference`."""
    text = ref.strip()
    if not text or _ID.match(text):
        raise BadReference(f"{ref!r} is not an image reference (image ids are not accepted)")
    name, _, digest = text.partition("@")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG.match(tag):
            raise BadReference(f"{ref!r}: invalid tag {tag!r}")
    if digest and not _DIGEST.match(digest):
        raise BadReference(f"{ref!r}: invalid digest {digest!r}")
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        domain, path_parts = parts[0], parts[1:]
    else:
        domain, path_parts = DEFAULT_DOMAIN, parts
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and len(path_parts) == 1:
        path_parts = ["library", *path_parts]
    if not all(_COMPONENT.match(p) for p in path_parts):
        raise BadReference(f"{ref!r}: invalid repository name")
    if not digest and not tag:
        tag = "latest"
    return Reference(domain, "/".join(path_parts), tag, digest or None)


def normalize(ref: str) -> str:
    return str(parse_reference(ref))


@dataclass(frozen=True)
class AllowedImages:
    """The operator's allow-list (``EASEML_ALLOWED_IMAGES``, comma-separated globs)."""

    patterns: tuple[str, ...] = ()
    source: str = ""

    @classmethod
    def parse(cls, text: str) -> "AllowedImages":
        pats = []
        for raw in (text or "").split(","):
            raw = raw.strip()
            if not raw:
                continue
            pats.append(_normalize_pattern(raw))
        return cls(tuple(pats), text or "")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "AllowedImages":
        env = os.environ if env is None else env
        return cls.parse(env.get("EASEML_ALLOWED_IMAGES", ""))

    def allows(self, ref: str | Reference) -> bool:
        r = parse_reference(ref) if isinstance(ref, str) else ref
        full = str(r)
        for pat in self.patterns:
            if fnmatch.fnmatchcase(full, pat):
                return True
            # a pattern naming only a repository matches all its tags and digests
            if not _has_tag_or_digest(pat) and fnmatch.fnmatchcase(r.name, pat):
                return True
        return False

    def describe(self) -> str:
        if not self.patterns:
            return "EASEML_ALLOWED_IMAGES is not set: only images already on this worker"
        return "EASEML_ALLOWED_IMAGES = " + ",".join(self.patterns)


def _has_tag_or_digest(pattern: str) -> bool:
    return "@" in pattern or ":" in pattern.rsplit("/", 1)[-1]


def _normalize_pattern(raw: str) -> str:
    """Give a pattern the implied parts of a reference (domain, library/) so that
    ``python:3.*`` and ``docker.io/library/python:3.*`` mean the same."""
    parts = raw.split("/")
    if len(parts) == 1 or not ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
                               or "*" in parts[0] or "?" in parts[0]):
        parts = [DEFAULT_DOMAIN, *(["library"] if len(parts) == 1 else []), *parts]
    if parts[0] == "index.docker.io":
        parts[0] = DEFAULT_DOMAIN
    if parts[0] == DEFAULT_DOMAIN and len(parts) == 2:
        parts.insert(1, "library")
    return "/".join(parts)
