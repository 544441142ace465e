"""Throw-away service key pairs and encrypted test sets for tests (real gpg, no fakes).

Use from a conftest or test module::

    from support.gpgkeys import service_keys, service_keys_with_passphrase  # noqa: F401 (fixtures)
    from support.gpgkeys import encrypted_test_set

    def test_x(service_keys, tmp_path):
        enc = encrypted_test_set(service_keys, tmp_path / "test.csv.gpg", X, y)

Both fixtures are session-scoped: each key pair is made once per test session in a private
temporary directory. The passphrase is random per session (``keys.passphrase`` and
``keys.passphrase_file``), never a constant.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from easeml_buildbot.custody.dataset import encrypt_dataset
from easeml_buildbot.custody.keys import create_keypair


@dataclass(frozen=True)
class ServiceKeys:
    """A service key pair on disk: ``public`` to encrypt, ``private`` (0600) to decrypt."""

    directory: Path
    public: Path
    private: Path
    passphrase: str | None = None
    passphrase_file: Path | None = None

    def env(self) -> dict[str, str]:
        """Environment for a worker process using this key (EASEML_PRIVATE_KEY, passphrase)."""
        out = {"EASEML_PRIVATE_KEY": str(self.private)}
        if self.passphrase is not None:
            out["EASEML_KEY_PASSPHRASE"] = self.passphrase
        return out


def make_service_keys(directory: str | os.PathLike[str], *, passphrase: bool = False,
                      fast: bool = True) -> ServiceKeys:
    """Create a key pair in ``directory`` (optionally protected by a random passphrase).

    ``fast``: minimum S2K iterations for the passphrase (a throw-away key; saves seconds of
    gpg-agent calibration per key). The protection format is the same as a real key's.
    """
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    phrase = secrets.token_urlsafe(18) if passphrase else None
    pub, priv = create_keypair(d, name="easeml test service", email="easeml-test@localhost",
                               passphrase=phrase, s2k_count=65536 if fast else None)
    pfile = None
    if phrase is not None:
        pfile = d / "passphrase.txt"
        fd = os.open(pfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(phrase + "\n")
    return ServiceKeys(directory=d, public=pub, private=priv, passphrase=phrase, passphrase_file=pfile)


@pytest.fixture(scope="session")
def service_keys(tmp_path_factory: pytest.TempPathFactory) -> ServiceKeys:
    """A session-wide service key pair without passphrase."""
    return make_service_keys(tmp_path_factory.mktemp("easeml-keys"))


@pytest.fixture(scope="session")
def service_keys_with_passphrase(tmp_path_factory: pytest.TempPathFactory) -> ServiceKeys:
    """A session-wide service key pair protected by a random passphrase."""
    return make_service_keys(tmp_path_factory.mktemp("easeml-keys-pp"), passphrase=True)


def write_test_set(path: str | os.PathLike[str], features: np.ndarray, labels: np.ndarray,
                   *, fmt: str | None = None, label_column: str = "label",
                   feature_names: list[str] | None = None) -> Path:
    """Write a plaintext test set (csv, jsonl or npz; from the suffix unless ``fmt``)."""
    p = Path(path)
    fmt = fmt or p.suffix.lstrip(".").lower()
    X = np.asarray(features)
    if X.ndim == 1:
        X = X[:, None]
    y = np.asarray(labels)
    if len(X) != len(y):
        raise ValueError("features and labels differ in length")
    names = feature_names or [f"x{i}" for i in range(X.shape[1])]
    if fmt == "csv":
        with open(p, "w", encoding="utf-8", newline="") as fh:
            fh.write(",".join([*names, label_column]) + "\n")
            for row, lab in zip(X.tolist(), y.tolist()):
                fh.write(",".join(map(str, [*row, lab])) + "\n")
    elif fmt == "jsonl":
        with open(p, "w", encoding="utf-8") as fh:
            for row, lab in zip(X.tolist(), y.tolist()):
                fh.write(json.dumps({**dict(zip(names, row)), label_column: lab}) + "\n")
    elif fmt == "npz":
        with open(p, "wb") as fh:
            np.savez(fh, **{"X": X, label_column: y})
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return p


def encrypted_test_set(keys: ServiceKeys, out_path: str | os.PathLike[str], features: np.ndarray,
                       labels: np.ndarray, *, fmt: str | None = None, label_column: str = "label") -> Path:
    """Write a plaintext test set beside ``out_path``, encrypt it to ``keys``, delete the plaintext.

    ``out_path`` should end in ``.csv.gpg`` / ``.jsonl.gpg`` / ``.npz.gpg`` (or pass ``fmt``).
    """
    out = Path(out_path)
    if fmt is None:
        inner = out.name[:-4] if out.name.endswith(".gpg") else out.name
        fmt = Path(inner).suffix.lstrip(".") or "csv"
    plain = out.with_name(out.name + f".plain.{fmt}")
    write_test_set(plain, features, labels, fmt=fmt, label_column=label_column)
    try:
        encrypt_dataset(keys.public, plain, out)
    finally:
        plain.unlink(missing_ok=True)
    return out
