"""The demo's model repository: the ``easeml init`` scaffold, a real scikit-learn model on
the bundled digits data set (weights exported to numpy), and a real encrypted test set."""

from __future__ import annotations

import csv
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from easeml_buildbot.scaffold import scaffold

BRANCH = "main"
AUTHOR = ("Dana Scientist", "data-scientist@example.com")
OWNER = "model-owner@example.com"
CONDITION = "n > 0.85 +/- 0.05"
RELIABILITY = 0.999
ADAPTIVITY = "full"
STEPS = 8
TRAIN_ROWS = 400

EASEML_YML = f"""\
# ease.ml/ci configuration of the demo repository (see `easeml init` for a commented one).
# The new model must be more than 85% accurate, decided within 5 points, and every one of
# the {STEPS} verdicts the test set can give is right with probability {RELIABILITY}.
condition: "{CONDITION}"
reliability: {RELIABILITY}
mode: fp-free
adaptivity: {ADAPTIVITY}
steps: {STEPS}
email:
  - {OWNER}
dataset: data/test.csv.gpg
label_column: label
model:
  dockerfile: Dockerfile
  timeout: 120
"""

# A model whose author transposed the weights: it crashes on the first matrix product.
BROKEN_PREDICT = '''\
#!/usr/bin/env python3
"""predict.py with a bug: the weight matrix is used transposed (the shapes do not match)."""
import os
from pathlib import Path
import numpy as np
HERE = Path(__file__).resolve().parent
x = np.loadtxt(os.environ["EASEML_FEATURES"], delimiter=",", skiprows=1, ndmin=2)
with np.load(HERE / "model" / "weights.npz") as w:
    scores = x @ w["coef"] + w["intercept"]          # should be w["coef"].T
Path(os.environ["EASEML_OUTPUT"], "predictions.csv").write_text(
    "prediction\\n" + "\\n".join(str(int(s.argmax())) for s in scores) + "\\n")
'''


@dataclass(frozen=True)
class ModelSpec:
    message: str
    train_rows: int | None = None     # None: a broken model
    expect: str = "pass"              # what the demo expects the service to decide


COMMITS = (
    ModelSpec("A better model: logistic regression on 400 training images", 400, "pass"),
    ModelSpec("A worse model: trained on only 20 images", 20, "fail"),
    ModelSpec("A broken model: predict.py uses the weights transposed", None, "model_error"),
)
INITIAL = ModelSpec("Initial model: logistic regression on 40 training images", 40, "baseline")


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    spec: ModelSpec
    dev_accuracy: float | None  # on held-out rows the test set does not contain


class DemoRepo:
    """A git repository on ``BRANCH`` holding the model; ``commit_model`` adds a commit."""

    def __init__(self, path: Path, public_key: Path) -> None:
        from sklearn.datasets import load_digits

        self.path = Path(path)
        self.public_key = Path(public_key)
        digits = load_digits()
        order = np.random.default_rng(7).permutation(len(digits.target))
        x, y = digits.data[order], digits.target[order]
        # training rows | a small dev set for the printout | the hidden test set
        self.x_train, self.y_train = x[:TRAIN_ROWS], y[:TRAIN_ROWS]
        self.x_dev, self.y_dev = x[TRAIN_ROWS:TRAIN_ROWS + 150], y[TRAIN_ROWS:TRAIN_ROWS + 150]
        self.x_test, self.y_test = x[TRAIN_ROWS + 150:], y[TRAIN_ROWS + 150:]

    # -- building -------------------------------------------------------------------------
    def create(self) -> Commit:
        from easeml_buildbot.custody.dataset import encrypt_dataset

        scaffold(self.path)
        (self.path / ".easeml.yml").write_text(EASEML_YML)
        (self.path / "data").mkdir()
        with tempfile.TemporaryDirectory(prefix="easeml-demo-plain-") as tmp:
            plain = Path(tmp) / "test.csv"
            self._write_csv(plain, self.x_test, self.y_test)
            encrypt_dataset(self.public_key, plain, self.path / "data" / "test.csv.gpg")
        self._git("init", "-q", "-b", BRANCH)
        self._git("config", "user.name", AUTHOR[0])
        self._git("config", "user.email", AUTHOR[1])
        return self.commit_model(INITIAL)

    @staticmethod
    def _write_csv(path: Path, x: np.ndarray, y: np.ndarray | None) -> None:
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([f"px{i}" for i in range(x.shape[1])] + (["label"] if y is not None else []))
            for i, row in enumerate(x):
                w.writerow([int(v) for v in row] + ([int(y[i])] if y is not None else []))

    def _train(self, rows: int) -> tuple[dict[str, np.ndarray], float]:
        """Standardised logistic regression, with the scaling folded into the weights so the
        scaffold's numpy-only predict.py (x @ coef.T + intercept) applies it unchanged."""
        import warnings

        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x, y = self.x_train[:rows], self.y_train[:rows]
        scaler = StandardScaler().fit(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(max_iter=3000).fit(scaler.transform(x), y)
        scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
        coef = clf.coef_ / scale
        intercept = clf.intercept_ - coef @ scaler.mean_
        weights = {"coef": coef, "intercept": intercept, "classes": clf.classes_}
        pred = clf.classes_[(self.x_dev @ coef.T + intercept).argmax(axis=1)]
        return weights, float(np.mean(pred == self.y_dev))

    def commit_model(self, spec: ModelSpec) -> Commit:
        acc = None
        if spec.train_rows is None:
            (self.path / "predict.py").write_text(BROKEN_PREDICT)
        else:
            weights, acc = self._train(spec.train_rows)
            np.savez(self.path / "model" / "weights.npz", **weights)
        self._git("add", "-A")
        self._git("commit", "-q", "-m", spec.message)
        sha = self._git("rev-parse", "HEAD").strip()
        return Commit(sha=sha, message=spec.message, spec=spec, dev_accuracy=acc)

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.path), *args], check=True,
                              capture_output=True, text=True).stdout
