"""Worker side of labels on demand (docs/labels-on-demand.md).

The test set holds features and row ids; ``decrypted_dataset(..., label_column=id_column)``
splits the ids off like labels (the model never sees them). After both models ran, the rows
where they disagree need a label; the owners' labels file (``labels:``, read from the same
default-branch commit as the test set) is matched to them by id. Either every such row has a
label and ``decide`` scores the planned rows (active labelling: unlabelled rows are rows where
the models agree, which cannot change ``n - o``), or a clause on ``d`` alone already fails
the condition (no label is needed: a model that disagrees with the base on too many rows
cannot make the owners label them), or the result is ``labels_needed`` with the
ids the owners must label: a spent use that waits in the ledger (``awaiting_labels``).

Nothing here writes to the developer-visible log: how many rows disagree is information
about the test set (and under adaptivity ``none`` the developer learns nothing at all).
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from easeml_buildbot.custody import labels as lab
from easeml_buildbot.runner.predictions import _as_text, align_to_labels


def disagreements(head: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Rows where the two models' predictions differ, before any label is known: numbers as
    numbers, text stripped, a number against text as text."""
    h, b = np.asarray(head), np.asarray(base)
    numeric = "biuf"
    if h.dtype.kind in numeric and b.dtype.kind in numeric:
        return h != b
    h = np.char.strip(h.astype(str)) if h.dtype.kind in "US" else _as_text(h)
    b = np.char.strip(b.astype(str)) if b.dtype.kind in "US" else _as_text(b)
    return h != b


def load_labels(show, repo: Path, config_sha: str, cfg: Any, key: Any, passphrase: str | None,
                work: Path) -> lab.LabelsFile | None:
    """The owners' labels file at the configuration commit, or None when none is committed."""
    blob = show(repo, config_sha, cfg.labels)
    if blob is None:
        return None
    enc = work / ("labels-" + PurePosixPath(cfg.labels).name)
    enc.write_bytes(blob)
    return lab.read_labels(enc, key, passphrase, id_column=cfg.id_column, label_column=cfg.label_column,
                           source=f"{config_sha[:12]}:{cfg.labels}")


def score(cfg: Any, plan: Any, ids: np.ndarray, head: np.ndarray, base: np.ndarray,
          labels: lab.LabelsFile | None, *, decide) -> tuple[str, dict[str, Any]]:
    """``("scored", {"verdict": ...})`` or ``("labels_needed", {"labels_needed": ...})``.

    ``head``/``base``: the models' predictions for the rows ``ids`` (service order).
    """
    match = lab.match_labels(ids, np.zeros(len(ids), dtype=bool), labels)
    if match.labelled.any():
        y_known = lab.typed_labels(lab.Match(match.labels[match.labelled], match.labelled[match.labelled],
                                             match.missing))
        head = align_to_labels(head, y_known, who="head model")
        base = align_to_labels(base, y_known, who="base model")
    differ = disagreements(head, base)
    match = lab.match_labels(ids, differ, labels)
    info = {"file": cfg.labels, "id_column": cfg.id_column, "label_column": cfg.label_column,
            "rows": int(len(ids)), "disagreements": int(differ.sum()),
            "labelled": int(match.labelled.sum()), "unmatched_labels": int(match.unmatched)}
    y = lab.typed_labels(match)
    kw = dict(reliability=cfg.reliability, adaptivity=cfg.adaptivity, steps=cfg.steps, mode=cfg.mode,
              method=cfg.method, plan=plan, labelled=match.labelled)
    if len(match.missing):
        from easeml_buildbot.estimator.decision import UnlabelledDisagreement

        try:  # a clause on d alone may fail the condition already: then no label is needed
            verdict = decide(cfg.condition, y, head, base, **kw)
            return "scored", {"verdict": verdict.to_dict(), "labels_on_demand": info}
        except UnlabelledDisagreement:
            pass
        missing = match.missing_ids(ids)
        info.update(count=len(missing), ids=missing,
                    ids_sha256=hashlib.sha256("\n".join(missing).encode()).hexdigest())
        return "labels_needed", {"labels_needed": info,
                                 "message": str(lab.missing_error(cfg.labels, len(missing), info["disagreements"]))}
    verdict = decide(cfg.condition, y, head, base, **kw)
    return "scored", {"verdict": verdict.to_dict(), "labels_on_demand": info}
