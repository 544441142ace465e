"""Image references normalised as Docker does, and the operator's allow-list of them."""

from __future__ import annotations

import pytest

from easeml_buildbot.runner.images import AllowedImages, BadReference, normalize, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("ref,norm", [
    ("python", "docker.io/library/python:latest"),
    ("python:3.11-slim", "docker.io/library/python:3.11-slim"),
    ("library/python:3", "docker.io/library/python:3"),
    ("index.docker.io/acme/x:1", "docker.io/acme/x:1"),
    ("ghcr.io/acme/tools", "ghcr.io/acme/tools:latest"),
    ("127.0.0.1:5000/a/b:2", "127.0.0.1:5000/a/b:2"),
    ("localhost/x", "localhost/x:latest"),
    (f"python@{D}", f"docker.io/library/python@{D}"),
    (f"python:3.11@{D}", f"docker.io/library/python:3.11@{D}"),
])
def test_normalize(ref, norm):
    assert normalize(ref) == norm


@pytest.mark.parametrize("ref", ["", "ab" * 32, "sha256:" + "ab" * 32, "Python:3", "x@sha256:zz", "a:b:c:d"])
def test_not_references(ref):
    with pytest.raises(BadReference):
        parse_reference(ref)


def test_allow_list():
    allowed = AllowedImages.parse("docker.io/library/python:3.*, ghcr.io/acme/*,localhost:5000/base")
    assert allowed.allows("python:3.11-slim") and allowed.allows("docker.io/library/python:3.12")
    assert allowed.allows(f"python:3.12@{D}")
    assert not allowed.allows("python:2.7") and not allowed.allows(f"python@{D}")
    assert allowed.allows("ghcr.io/acme/team/model:7") and not allowed.allows("ghcr.io/acme2/x")
    assert allowed.allows("localhost:5000/base:any") and allowed.allows(f"localhost:5000/base@{D}")
    assert not allowed.allows("localhost:5000/base2")
    assert AllowedImages.parse("python:3.*").patterns == ("docker.io/library/python:3.*",)
    assert AllowedImages.parse("docker.io/python:3.*").patterns == ("docker.io/library/python:3.*",)
    assert not AllowedImages.from_env({}).allows("python:3.11")
    assert "only images already on this worker" in AllowedImages.from_env({}).describe()
