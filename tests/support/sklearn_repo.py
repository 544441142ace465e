"""The realistic example model repository (tests/fixtures/sklearn_repo) as a git repository:
the fixture's files, weights trained here by the fixture's own train.py on generated data,
and a test set generated here and encrypted to the service key (only the ciphertext is
committed). Used by tests/master/test_egress_e2e.py and benchmarks/bench_egress.py.

    repo = make_sklearn_repo(tmp / "repo", public_key=keys.public, ca_file=HOST_CA_BUNDLE)
    pr = repo.commit_weights("pr-1", rows=2000)          # only model/params.npz changes
    pr.sha, pr.accuracy, pr.predictions                  # what the container must answer

``ca_file`` becomes the repository's ``extra-ca.pem`` (the CA of a TLS-intercepting proxy
between the worker and PyPI, which this machine has); ``None`` leaves it out.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from support.models import _git, test_set_csv

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sklearn_repo"
DATASET_PATH = "data/test.csv.gpg"
N_FEATURES = 20


def _fixture_module(name: str) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": f"easeml_fixture_{name}", "__file__": str(FIXTURE / f"{name}.py")}
    exec(compile((FIXTURE / f"{name}.py").read_text(), str(FIXTURE / f"{name}.py"), "exec"), ns)  # noqa: S102
    return ns


def generated_data(seed: int = 7, train_rows: int = 2000, test_rows: int = 1200):
    """A binary task from scikit-learn's generator: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=train_rows + test_rows, n_features=N_FEATURES,
                               n_informative=8, n_redundant=4, flip_y=0.02, class_sep=1.6,
                               random_state=seed)
    x = np.round(x, 6)  # what the csv carries
    return x[:train_rows], y[:train_rows], x[train_rows:], y[train_rows:]


@dataclass(frozen=True)
class Commit:
    sha: str
    branch: str
    predictions: np.ndarray = field(repr=False)
    accuracy: float


@dataclass(frozen=True)
class SklearnRepo:
    path: Path
    branch: str
    base: Commit
    dataset: str
    dataset_id: str
    labels: np.ndarray = field(repr=False)
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)

    def weights(self, *, rows: int | None = None, C: float = 1.0, shuffle_labels: bool = False) -> bytes:
        """model/params.npz as the fixture's train.py writes it."""
        train = _fixture_module("train")
        y = self.y_train[:rows]
        if shuffle_labels:  # a training bug: the labels lost their rows
            y = np.random.default_rng(0).permutation(y)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "params.npz"
            train["export"](train["fit"](self.x_train[:rows], y, C=C), out)
            return out.read_bytes()

    def predictions_of(self, params: bytes) -> np.ndarray:
        """What the fixture's predict.py answers on the test set (run here, same code)."""
        predict = _fixture_module("predict")
        return predict["load_pipeline"](io.BytesIO(params)).predict(self.x_test)

    def commit_weights(self, branch: str, *, message: str = "retrained model", **train: Any) -> Commit:
        """Commit new model/params.npz (nothing else) on ``branch`` (from the base branch)."""
        params = self.weights(**train)
        _git(self.path, "checkout", "-q", "-B", branch, self.branch)
        (self.path / "model" / "params.npz").write_bytes(params)
        _git(self.path, "add", "--", "model/params.npz")
        _git(self.path, "commit", "-q", "-m", message)
        sha = _git(self.path, "rev-parse", "HEAD")
        preds = self.predictions_of(params)
        return Commit(sha, branch, preds, float(np.mean(preds == self.labels)))


def make_sklearn_repo(path: str | os.PathLike[str], *, public_key: str | os.PathLike[str],
                      ca_file: str | os.PathLike[str] | None = None, branch: str = "main",
                      base_rows: int = 60, run_label: str | None = None) -> SklearnRepo:
    """``run_label``: a ``LABEL`` after ``FROM``, so the daemon's layer cache (which a
    previous test run on the same daemon filled) cannot serve this repository's first build."""
    from easeml_buildbot.custody.dataset import encrypt_dataset

    repo = Path(path)
    repo.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", branch, str(repo)], check=True)
    for src in FIXTURE.rglob("*"):
        if src.is_file() and "__pycache__" not in src.parts:
            dst = repo / src.relative_to(FIXTURE)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    if ca_file is not None:
        shutil.copy(ca_file, repo / "extra-ca.pem")
    if run_label is not None:
        df = repo / "Dockerfile"
        lines = df.read_text().splitlines(keepends=True)
        i = next(k for k, ln in enumerate(lines) if ln.upper().startswith("FROM "))
        lines.insert(i + 1, f"LABEL easeml.test.run={run_label}\n")
        df.write_text("".join(lines))
    x_train, y_train, x_test, y_test = generated_data()
    r = SklearnRepo(repo, branch, Commit("", branch, np.array([]), 0.0), DATASET_PATH, "",
                    y_test, x_train, y_train, x_test)
    params = r.weights(rows=base_rows)  # the accepted model: trained on a few rows
    (repo / "model").mkdir(exist_ok=True)
    (repo / "model" / "params.npz").write_bytes(params)
    (repo / "data").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="easeml-plain-") as tmp:
        plain = Path(tmp) / "test.csv"
        plain.write_text(test_set_csv(x_test, y_test))
        ds_id = encrypt_dataset(public_key, plain, repo / DATASET_PATH)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "scikit-learn model, config and encrypted test set")
    sha = _git(repo, "rev-parse", "HEAD")
    preds = r.predictions_of(params)
    base = Commit(sha, branch, preds, float(np.mean(preds == y_test)))
    return SklearnRepo(repo, branch, base, DATASET_PATH, ds_id, y_test, x_train, y_train, x_test)
