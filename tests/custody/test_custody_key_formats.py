"""Key files of ease.ml/ci (public + private block in one file) and the private key taken
base64-encoded from the worker's environment (as ease.ml/ci's GitHub secrets held it)."""

from __future__ import annotations

import base64
import os
import stat

import numpy as np
import pytest

from easeml_buildbot.custody.dataset import DatasetError, decrypted_dataset
from easeml_buildbot.custody.keys import KEY_B64_ENV, KeysError, key_from_env
from support.gpgkeys import encrypted_test_set

X = np.arange(12, dtype=float).reshape(6, 2)
Y = np.array([0, 1, 0, 1, 1, 0])


@pytest.fixture(scope="module")
def sec_asc(service_keys, tmp_path_factory):
    """ease.ml/ci's easeml_sec.asc: the public block, then the private block."""
    p = tmp_path_factory.mktemp("easemlci") / "easeml_sec.asc"
    p.write_bytes(service_keys.public.read_bytes() + service_keys.private.read_bytes())
    os.chmod(p, 0o600)
    return p


def test_combined_key_file_decrypts(service_keys, sec_asc, tmp_path):
    enc = encrypted_test_set(service_keys, tmp_path / "test.csv.gpg", X, Y)
    with decrypted_dataset(enc, sec_asc) as ds:
        assert list(ds.labels) == list(np.asarray(Y)[ds.source_rows])


def test_public_key_alone_is_still_refused(service_keys, tmp_path):
    enc = encrypted_test_set(service_keys, tmp_path / "test.csv.gpg", X, Y)
    with pytest.raises(DatasetError, match="this is the public key"):
        with decrypted_dataset(enc, service_keys.public):
            pass


def test_key_from_env_writes_a_private_file_and_drops_the_variable(service_keys, sec_asc, tmp_path):
    secret = base64.b64encode(sec_asc.read_bytes()).decode()
    env = {KEY_B64_ENV: secret, "OTHER": "x"}
    path = key_from_env(env)
    try:
        assert KEY_B64_ENV not in env and env == {"OTHER": "x"}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        data = path.read_bytes()
        assert b"PRIVATE KEY BLOCK" in data and b"PUBLIC KEY BLOCK" not in data  # private block only
        enc = encrypted_test_set(service_keys, tmp_path / "test.csv.gpg", X, Y)
        with decrypted_dataset(enc, path) as ds:
            assert list(ds.labels) == list(np.asarray(Y)[ds.source_rows])
    finally:
        path.unlink()
        path.parent.rmdir()
    assert key_from_env({}) is None


def test_key_from_env_errors_never_quote_the_value(service_keys):
    with pytest.raises(KeysError, match="not valid base64") as exc:
        key_from_env({KEY_B64_ENV: "@@not-base64-secretish@@"})
    assert "secretish" not in str(exc.value)
    public_only = base64.b64encode(service_keys.public.read_bytes()).decode()
    with pytest.raises(KeysError, match=f"{KEY_B64_ENV}: this is the public key"):
        key_from_env({KEY_B64_ENV: public_only})
