"""Model repositories for tests: a real git repo with a Dockerfile, a numpy-only
``predict.py``, weights of a scikit-learn classifier trained here, ``.easeml.yml`` and the
test set encrypted to a test key. Shared by the runner, master, email and demo tests.

    repo = make_model_repo(tmp_path / "repo", public_key=pub, quality=0.8)
    pr = repo.commit_model(quality=0.95, branch="pr-1")      # a better model on a branch
    repo.base.sha, pr.sha, pr.accuracy, repo.labels          # ground truth for assertions

``quality`` is the target accuracy on the test set: the trained classifier (about 0.96 on
digits) has a deterministic, label-blind fraction of its answers changed to another class,
so the model inside the container still knows nothing about the labels. ``None`` keeps the
trained classifier as is. The signature of ``make_model_repo``/``commit_model`` is stable.
"""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFAULT_BASE_IMAGE = "easeml/python:bookworm"
BUSYBOX_IMAGE = "easeml/busybox:latest"
DATASET_PATH = "data/test.csv.gpg"

# The model's code, run inside the container (python3 + numpy only) and, through exec(),
# by this module to know the exact predictions each commit makes.
PREDICT_PY = '''\
#!/usr/bin/env python3
"""Linear classifier (numpy only): reads $EASEML_FEATURES (csv with a header row),
writes $EASEML_OUTPUT/predictions.csv (header 'prediction', one row per input row)."""
import csv, os, sys
from pathlib import Path
import numpy as np

HERE = Path(__file__).resolve().parent


def load_features(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return np.asarray(rows[1:], dtype=float).reshape(len(rows) - 1, -1)


def predict(w, x):
    z = (x - w["mean"]) / w["scale"]
    scores = z @ w["coef"].T + w["intercept"]
    k = len(w["classes"])
    idx = (scores[:, 0] > 0).astype(int) if w["coef"].shape[0] == 1 else scores.argmax(axis=1)
    # Quality knob: a fixed, label-blind share of rows gets the next class instead. Which rows
    # is a hash of the row's features (not its position): the service feeds rows in its own
    # order, and a row's prediction must not depend on where it is.
    h = np.sin(x @ np.arange(1.0, x.shape[1] + 1) * 12.9898 + float(w["flip_seed"]) * 78.233)
    flip = np.modf(np.abs(h) * 43758.5453)[0] < float(w["flip_rate"])
    idx = np.where(flip, (idx + 1) % k, idx)
    return w["classes"][idx]


def main():
    feats = os.environ.get("EASEML_FEATURES", "/easeml/input/features.csv")
    out = Path(os.environ.get("EASEML_OUTPUT", "/easeml/output"))
    with np.load(HERE / "model" / "weights.npz", allow_pickle=False) as z:
        w = {k: z[k] for k in z.files}
    preds = predict(w, load_features(feats))
    with open(out / "predictions.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["prediction"])
        wr.writerows([p.item()] for p in preds)
    print(f"predict.py: {len(preds)} predictions", file=sys.stderr)


if __name__ == "__main__":
    main()
'''

DOCKERFILE = """\
FROM {base_image}
WORKDIR /model
COPY predict.py /model/predict.py
COPY model/ /model/model/
CMD ["python3", "/model/predict.py"]
"""

DOCKERIGNORE = ".git\ndata/\n*.gpg\n"


def _git(repo: Path, *args: str, input: bytes | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Model Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
           "GIT_COMMITTER_NAME": "Model Dev", "GIT_COMMITTER_EMAIL": "dev@example.com",
           "GIT_CONFIG_NOSYSTEM": "1"}
    res = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                         input=input, env=env)
    return res.stdout.decode().strip()


@dataclass(frozen=True)
class Split:
    """A bundled scikit-learn dataset, shuffled once and split into train and test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_split(name: str = "digits", *, train_rows: int = 500, test_rows: int | None = None,
               seed: int = 0) -> Split:
    from sklearn import datasets

    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}[name]
    x, y = loader(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    end = None if test_rows is None else train_rows + test_rows
    return Split(name, x[:train_rows], y[:train_rows], x[train_rows:end], y[train_rows:end])


def train_weights(split: Split, *, quality: float | None = None, flip_seed: int = 1) -> dict[str, np.ndarray]:
    """Fit a logistic regression; set the flip rate so test accuracy is about ``quality``."""
    from sklearn.linear_model import LogisticRegression

    mean = split.x_train.mean(axis=0)
    scale = split.x_train.std(axis=0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(max_iter=2000).fit((split.x_train - mean) / scale, split.y_train)
    w = {"coef": clf.coef_, "intercept": clf.intercept_, "classes": clf.classes_,
         "mean": mean, "scale": scale, "flip_rate": np.float64(0.0), "flip_seed": np.int64(flip_seed)}
    if quality is not None:
        base = float(np.mean(run_predict(w, split.x_test) == split.y_test))
        w["flip_rate"] = np.float64(min(1.0, max(0.0, 1.0 - quality / base)) if base > 0 else 0.0)
    return w


def run_predict(weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """What predict.py answers for ``x`` (the same code, executed here)."""
    ns: dict[str, Any] = {"__name__": "easeml_test_predict", "__file__": "predict.py"}
    exec(compile(PREDICT_PY, "predict.py", "exec"), ns)  # noqa: S102 - our own constant
    return ns["predict"](dict(weights), np.asarray(x, dtype=float))


def _npz_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **weights)
    return buf.getvalue()


def test_set_csv(x: np.ndarray, y: np.ndarray, label_column: str = "label") -> str:
    cols = [f"f{i}" for i in range(x.shape[1])] + [label_column]
    lines = [",".join(cols)]
    for row, label in zip(x, y):
        lines.append(",".join(f"{v:g}" for v in row) + f",{label}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ModelCommit:
    sha: str
    branch: str
    quality: float | None
    predictions: np.ndarray = field(repr=False)  # on the whole test set, in order
    accuracy: float                              # on the whole test set

    def accuracy_on(self, labels: np.ndarray, rows: np.ndarray) -> float:
        """Accuracy on the file rows ``rows`` (``ModelRepo.rows_used``), labels in that order."""
        return float(np.mean(self.predictions[np.asarray(rows)] == labels))


@dataclass(frozen=True)
class ModelRepo:
    path: Path
    branch: str                 # the default (base) branch
    base: ModelCommit           # the first commit: model + config + encrypted test set
    dataset: str                # repo-relative path of the encrypted test set
    dataset_id: str             # sha256 of its ciphertext
    labels: np.ndarray = field(repr=False)
    split: Split = field(repr=False)
    base_image: str = DEFAULT_BASE_IMAGE

    @property
    def n_test(self) -> int:
        return len(self.labels)

    def rows_used(self, n: int | None, private_key: Path, passphrase: str | None = None) -> np.ndarray:
        """The file rows an evaluation needing ``n`` rows uses, in its order (custody decides)."""
        from easeml_buildbot.custody.dataset import decrypted_dataset

        with decrypted_dataset(self.path / self.dataset, private_key, passphrase, rows=n) as ds:
            return ds.source_rows

    def commit_files(self, files: Mapping[str, str | bytes | None], *, branch: str | None = None,
                     message: str = "change files", start: str | None = None) -> str:
        """Write (``None`` deletes) files on ``branch`` (created from ``start`` or the base
        branch's tip when new) and commit; returns the sha. The checkout is left on it."""
        branch = branch or self.branch
        existing = _git(self.path, "branch", "--list", branch)
        if existing:
            _git(self.path, "checkout", "-q", branch)
        else:
            _git(self.path, "checkout", "-q", "-b", branch, start or self.branch)
        for rel, content in files.items():
            p = self.path / rel
            if content is None:
                if p.exists():
                    _git(self.path, "rm", "-q", "-r", "--", rel)
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
            _git(self.path, "add", "--", rel)
        _git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return _git(self.path, "rev-parse", "HEAD")

    def commit_model(self, *, quality: float | None = 0.9, branch: str = "pr",
                     message: str | None = None, flip_seed: int = 2,
                     predict_py: str | None = None, dockerfile: str | None = None,
                     files: Mapping[str, str | bytes | None] | None = None,
                     start: str | None = None) -> ModelCommit:
        """Commit a retrained model of ``quality`` (plus any ``files``) on ``branch``."""
        w = train_weights(self.split, quality=quality, flip_seed=flip_seed)
        changes: dict[str, str | bytes | None] = {"model/weights.npz": _npz_bytes(w)}
        if predict_py is not None:
            changes["predict.py"] = predict_py
        if dockerfile is not None:
            changes["Dockerfile"] = dockerfile
        changes.update(files or {})
        sha = self.commit_files(changes, branch=branch, start=start,
                                message=message or f"model of quality {quality}")
        preds = run_predict(w, self.split.x_test)
        return ModelCommit(sha, branch, quality, preds, float(np.mean(preds == self.labels)))

    def checkout(self, ref: str) -> None:
        _git(self.path, "checkout", "-q", ref)


def easeml_config(*, condition: str, reliability: float, mode: str, adaptivity: str,
                  steps: int, email: Sequence[str], dataset: str, label_column: str,
                  model: Mapping[str, Any] | None = None,
                  extra: Mapping[str, Any] | None = None) -> str:
    cfg: dict[str, Any] = {
        "condition": condition, "reliability": reliability, "mode": mode,
        "adaptivity": adaptivity, "steps": steps, "email": list(email),
        "dataset": dataset, "label_column": label_column,
        "model": {"dockerfile": "Dockerfile", **(model or {})},
    }
    cfg.update(extra or {})
    return yaml.safe_dump(cfg, sort_keys=False)


def make_model_repo(path: str | os.PathLike[str], *, public_key: str | os.PathLike[str],
                    quality: float | None = 0.9, dataset: str = "digits",
                    condition: str = "n > 0.8 +/- 0.1", reliability: float = 0.999,
                    mode: str = "fp-free", adaptivity: str = "full", steps: int = 8,
                    email: Sequence[str] = ("owner@example.com",),
                    train_rows: int = 500, test_rows: int | None = None, seed: int = 0,
                    base_image: str = DEFAULT_BASE_IMAGE, branch: str = "main",
                    label_column: str = "label", model: Mapping[str, Any] | None = None,
                    extra_config: Mapping[str, Any] | None = None,
                    flip_seed: int = 1) -> ModelRepo:
    """Create a git repository at ``path`` whose first commit on ``branch`` holds a trained
    model of ``quality``, its Dockerfile, ``.easeml.yml`` and the test set encrypted to
    ``public_key`` at ``data/test.csv.gpg`` (the plaintext never touches the repo)."""
    from easeml_buildbot.custody.dataset import encrypt_dataset

    repo = Path(path)
    repo.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", branch, str(repo)], check=True)
    split = load_split(dataset, train_rows=train_rows, test_rows=test_rows, seed=seed)
    w = train_weights(split, quality=quality, flip_seed=flip_seed)
    files: dict[str, bytes | str] = {
        "Dockerfile": DOCKERFILE.format(base_image=base_image),
        ".dockerignore": DOCKERIGNORE,
        "predict.py": PREDICT_PY,
        "model/weights.npz": _npz_bytes(w),
        ".easeml.yml": easeml_config(condition=condition, reliability=reliability, mode=mode,
                                     adaptivity=adaptivity, steps=steps, email=email,
                                     dataset=DATASET_PATH, label_column=label_column,
                                     model=model, extra=extra_config),
    }
    for rel, content in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    (repo / "data").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="easeml-plain-") as tmp:
        plain = Path(tmp) / "test.csv"
        plain.write_text(test_set_csv(split.x_test, split.y_test, label_column))
        ds_id = encrypt_dataset(public_key, plain, repo / DATASET_PATH)
    _git(repo, "add", "--", *files, DATASET_PATH)
    _git(repo, "commit", "-q", "-m", "initial model, config and encrypted test set")
    sha = _git(repo, "rev-parse", "HEAD")
    preds = run_predict(w, split.x_test)
    base = ModelCommit(sha, branch, quality, preds, float(np.mean(preds == split.y_test)))
    return ModelRepo(path=repo, branch=branch, base=base, dataset=DATASET_PATH, dataset_id=ds_id,
                     labels=split.y_test, split=split, base_image=base_image)
