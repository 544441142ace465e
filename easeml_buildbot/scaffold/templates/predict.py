#!/usr/bin/env python3
"""The model under test: read the features, write one prediction per row.

The ease.ml/ci model contract (docs/model-contract.md):
  $EASEML_FEATURES  the features file, read-only: /easeml/input/features.<csv|jsonl|npz>
                    (the test set without its label column; csv has a header row)
  $EASEML_OUTPUT    an empty writable directory: write predictions.<same ext> there,
                    one prediction per input row, in input order
The model runs with no network and never sees the labels. Whatever it prints goes to the
build log (truncated), so print nothing secret.

Replace `predict` with your model. This one is a linear classifier loaded from
model/weights.npz (write it with `python3 train.py dev.csv`), or a constant class when
there are no weights yet.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "model" / "weights.npz"
DEFAULT_CLASS = HERE / "model" / "default_class.txt"


def read_features(path: Path) -> np.ndarray:
    """Load the features as a float matrix, rows in file order."""
    ext = path.suffix.lstrip(".")
    if ext == "csv":
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        return np.asarray(rows[1:], dtype=float).reshape(len(rows) - 1, -1)
    if ext == "jsonl":
        with path.open() as f:
            records = [json.loads(line) for line in f if line.strip()]
        return np.asarray(
            [list(r.values()) if isinstance(r, dict) else r for r in records], dtype=float
        )
    if ext == "npz":
        with np.load(path) as z:
            key = "features" if "features" in z.files else z.files[0]
            return np.asarray(z[key], dtype=float)
    raise SystemExit(f"predict.py: unsupported features format {path.name!r}")


def write_predictions(out_dir: Path, ext: str, predictions: list) -> Path:
    """Write one prediction per row in the same format as the features."""
    path = out_dir / f"predictions.{ext}"
    if ext == "csv":
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["prediction"])
            w.writerows([p] for p in predictions)
    elif ext == "jsonl":
        with path.open("w") as f:
            f.writelines(json.dumps(p) + "\n" for p in predictions)
    else:
        np.savez(path, predictions=np.asarray(predictions))
    return path


def predict(x: np.ndarray) -> list:
    """The model: argmax of a linear score, or a constant class without weights."""
    if WEIGHTS.exists():
        with np.load(WEIGHTS, allow_pickle=False) as w:
            coef, intercept, classes = w["coef"], w["intercept"], w["classes"]
        scores = x @ coef.T + intercept
        if coef.shape[0] == 1:  # binary: one row of weights, as scikit-learn stores it
            picked = (scores[:, 0] > 0).astype(int)
        else:
            picked = scores.argmax(axis=1)
        return [c.item() for c in classes[picked]]
    constant = DEFAULT_CLASS.read_text().strip() if DEFAULT_CLASS.exists() else "0"
    value: object = int(constant) if constant.lstrip("-").isdigit() else constant
    print(f"predict.py: no {WEIGHTS.name}; predicting the constant class {value!r}", file=sys.stderr)
    return [value] * len(x)


def main() -> int:
    features = Path(os.environ.get("EASEML_FEATURES", "/easeml/input/features.csv"))
    out_dir = Path(os.environ.get("EASEML_OUTPUT", "/easeml/output"))
    x = read_features(features)
    predictions = predict(x)
    path = write_predictions(out_dir, features.suffix.lstrip("."), predictions)
    print(f"predict.py: wrote {len(predictions)} predictions to {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
