"""Shared helpers for the deployment tests: the repository root, Docker and compose probes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "easeml/python:bookworm"


def docker_ok() -> str | None:
    """None when a Docker daemon answers, else the reason it does not."""
    if not shutil.which("docker"):
        return "no docker CLI"
    try:
        r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if r.returncode == 0 else f"no Docker daemon answers: {r.stderr.strip()[:200]}"


def require_docker(image: str | None = None) -> None:
    reason = docker_ok()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    if image:
        r = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
        if r.returncode != 0:
            reason = f"base image {image} missing (bash scripts/build-base-image.sh builds it)"
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
