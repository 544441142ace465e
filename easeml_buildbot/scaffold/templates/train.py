#!/usr/bin/env python3
"""Train the template's linear model on a labelled dev set (never the test set).

    python3 train.py dev.csv [--label-column label]

Needs scikit-learn on your machine (not in the model image): it fits a logistic
regression and exports its weights to model/weights.npz, which predict.py applies with
numpy alone, so the image stays small.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="CSV with a header row and a label column")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-iter", type=int, default=1000)
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression

    with args.data.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or args.label_column not in rows[0]:
        raise SystemExit(f"{args.data}: no rows or no column {args.label_column!r}")
    columns = [c for c in rows[0] if c != args.label_column]
    x = np.asarray([[float(r[c]) for c in columns] for r in rows])
    y = np.asarray([r[args.label_column] for r in rows])
    if all(v.lstrip("-").isdigit() for v in y):
        y = y.astype(int)
    clf = LogisticRegression(max_iter=args.max_iter).fit(x, y)
    out = HERE / "model" / "weights.npz"
    out.parent.mkdir(exist_ok=True)
    np.savez(out, coef=clf.coef_, intercept=clf.intercept_, classes=clf.classes_)
    print(f"trained on {len(y)} rows, {len(columns)} features; dev accuracy {clf.score(x, y):.3f}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
