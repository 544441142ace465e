"""Is there a Docker daemon (and the locally built base image) for a test to use?"""

from __future__ import annotations

import shutil
import subprocess


def docker_ok() -> str | None:
    """None when a Docker daemon answers, else the reason it does not."""
    if not shutil.which("docker"):
        return "no docker CLI"
    try:
        r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if r.returncode == 0 else f"no Docker daemon answers: {r.stderr.strip()[:200]}"


def docker_unavailable(image: str | None = None) -> str | None:
    """None when a daemon answers and ``image`` (if given) is present, else why not."""
    reason = docker_ok()
    if reason or not image:
        return reason
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        return f"base image {image} missing (bash scripts/build-base-image.sh builds it)"
    return None
