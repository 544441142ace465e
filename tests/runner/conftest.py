"""Fixtures for the runner tests: the real Docker daemon (skip with a reason when none
answers), the locally built base images, service keys (real gpg) and a model repository."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from support.gpgkeys import service_keys, service_keys_with_passphrase  # noqa: F401 (fixtures)
from support.models import BUSYBOX_IMAGE, DEFAULT_BASE_IMAGE, make_model_repo

ROOT = Path(__file__).resolve().parents[2]

# The runners of these tests keep no model image after a run (a budget of 0: each is pruned
# when its run ends), so that every test builds what it checks and the shared daemon is left
# as it was; tests of the cache make their own ImageCache.
os.environ.setdefault("EASEML_IMAGE_CACHE_BYTES", "0")
os.environ.setdefault("EASEML_IMAGE_CACHE_DIR", tempfile.mkdtemp(prefix="easeml-image-cache-"))


@pytest.fixture(scope="session")
def docker_client():
    """A docker client for a daemon that answers and has the base images (built on demand)."""
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable daemon
        pytest.skip(f"no Docker daemon answers ({exc}); run scripts/start-dockerd.sh")
    missing = [t for t in (DEFAULT_BASE_IMAGE, BUSYBOX_IMAGE) if not _has_image(client, t)]
    if missing:
        res = subprocess.run(["bash", str(ROOT / "scripts/build-base-image.sh")],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"base images {missing} missing and could not be built: {res.stderr[-500:]}")
    return client


def _has_image(client, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


@pytest.fixture
def tag(docker_client):
    """A unique model tag for this test; afterwards no container or image of it may remain
    (checked by label, so other suites using the daemon at the same time do not interfere)."""
    value = f"test-{secrets.token_hex(6)}"
    yield value
    flt = {"label": f"easeml.tag={value}"}
    containers = docker_client.containers.list(all=True, filters=flt)
    images = docker_client.images.list(all=True, filters=flt)
    assert not containers, f"containers left behind: {[c.short_id for c in containers]}"
    assert not images, f"images left behind: {[i.short_id for i in images]}"


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory, service_keys):  # noqa: F811 - the imported fixture
    """A model repository on digits whose base model has accuracy about 0.8."""
    return make_model_repo(tmp_path_factory.mktemp("digits") / "repo", public_key=service_keys.public,
                           quality=0.8, condition="n > 0.8 +/- 0.1 /\\ d < 0.35 +/- 0.1")  # d is about 0.19


@pytest.fixture(scope="session")
def marker_labels():
    """Labels nobody could guess: if one shows up anywhere a model can see, it leaked."""
    return np.asarray([f"secret-label-{secrets.token_hex(8)}" for _ in range(40)])


@pytest.fixture(scope="session")
def marker_test_set(tmp_path_factory, service_keys, marker_labels):  # noqa: F811
    from support.gpgkeys import encrypted_test_set

    x = np.arange(40 * 3, dtype=float).reshape(40, 3)
    return encrypted_test_set(service_keys, tmp_path_factory.mktemp("marker") / "test.csv.gpg",
                              x, marker_labels)
