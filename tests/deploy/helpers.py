"""Shared helpers for the deployment tests: the repository root, Docker and compose probes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from support.dockerd import docker_ok, docker_unavailable  # noqa: F401 (docker_ok: re-exported)

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "easeml/python:bookworm"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def require_docker(image: str | None = None) -> None:
    reason = docker_unavailable(image)
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) when present, else Debian's `docker-compose` (v1)."""
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def build_context(dest: Path) -> Path:
    """What the repository root's .dockerignore lets through, copied (the working tree may
    hold a virtualenv and other people's files). The host's CA bundle goes in as
    extra-ca.pem, the documented hook for TLS-intercepting proxies between a build and PyPI."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.toml", "*.sqlite")
    for name in ("easeml_buildbot", "master", "worker", "crossbar"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    if HOST_CA_BUNDLE.exists():
        shutil.copy(HOST_CA_BUNDLE, dest / "extra-ca.pem")
    return dest
