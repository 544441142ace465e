"""Labels on demand: row ids, the owners' labels file, and matching the two by id.

With ``labels:`` in ``.easeml.yml`` (docs/labels-on-demand.md) the test set holds features
and a row id per row (``id_column``) and no labels; the ids are split off like labels are
(the model never sees them). A second encrypted file, ``labels:``, holds ``id,label`` rows
that the owners add over time: for every row where the two models disagree, the scorer
needs a label; where they agree the label cannot change ``n - o`` (docs/statistics.md).

Labels are matched to rows **by id, never by position**. Ids are compared as text after the
same normalisation the label column gets (``007`` and ``7`` are the same id; two rows of one
file that normalise to the same id are refused). Messages name files, counts and data-row
numbers, never an id or a label: they may reach the pull request's check run, and the ids
of the rows where the models disagree are the owners' information only.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from easeml_buildbot.custody.dataset import DatasetError, _to_label_array, decrypted_dataset

#: ids listed in one owners' mail body (the attachment lists every one)
MAX_IDS_IN_TEXT = 50


class LabelsError(DatasetError):
    """The labels file cannot be used, or rows that need a label have none."""


def normalize_ids(values: np.ndarray | list) -> np.ndarray:
    """Ids as text (object array), normalised like labels (``_to_label_array``)."""
    arr = _to_label_array(np.asarray(values).astype(str) if len(values) else np.asarray([], dtype=str))
    return np.array([str(v) for v in arr.tolist()], dtype=object)


def duplicate_rows(ids: np.ndarray) -> np.ndarray:
    """Positions (into ``ids``) of every id that occurred before."""
    _, first = np.unique(ids.astype(str), return_index=True)
    dup = np.ones(len(ids), dtype=bool)
    dup[first] = False
    return np.flatnonzero(dup)


def first_repeat(ids: np.ndarray, source_rows: np.ndarray | None) -> tuple[int, int | None]:
    """(how many ids repeat, the data row (1-based, in file order) of the first repeat)."""
    order = np.argsort(source_rows, kind="stable") if source_rows is not None and len(source_rows) \
        else np.arange(len(ids))
    dup = duplicate_rows(ids[order])
    if not len(dup):
        return 0, None
    rows = source_rows[order] if source_rows is not None and len(source_rows) else order
    return len(dup), int(rows[dup[0]]) + 1


def check_unique(ids: np.ndarray, source: str, source_rows: np.ndarray | None = None) -> None:
    """Refuse a test set whose ids repeat (naming the first repeat's data row, never the id)."""
    count, row = first_repeat(ids, source_rows)
    if count:
        raise LabelsError(f"{source}: {count} row id(s) repeat (data row {row} is the first); "
                          "every row needs its own id")


@dataclass(frozen=True)
class LabelsFile:
    """The owners' labels: id -> label (both as read), and where they came from."""

    source: str
    labels: Mapping[str, object] = field(repr=False)

    def __len__(self) -> int:
        return len(self.labels)


def _ids_from_features(path: Path, fmt: str, id_column: str, source: str) -> list:
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            if id_column not in header:
                raise LabelsError(f"{source}: line 1: id column '{id_column}' not in the CSV header "
                                  f"({len(header)} fields); the labels file has columns "
                                  f"'{id_column}' and the label column")
            idx = header.index(id_column)
            return [row[idx] for row in reader if row]
    if fmt == "jsonl":
        out = []
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                if id_column not in obj:
                    raise LabelsError(f"{source}: row {i}: id field '{id_column}' missing")
                out.append(obj[id_column])
        return out
    with np.load(path, allow_pickle=False) as npz:
        if id_column not in npz.files:
            raise LabelsError(f"{source}: no id array named '{id_column}' in the NPZ archive")
        return list(npz[id_column])


def read_labels(enc_path: str | os.PathLike[str], key: str | os.PathLike[str], passphrase: str | None, *,
                id_column: str, label_column: str, source: str | None = None) -> LabelsFile:
    """Decrypt the owners' labels file and return its id -> label map.

    Parameters
    ----------
    enc_path : path
        The encrypted labels file (``easeml dataset encrypt``), CSV/JSONL/NPZ with the columns
        ``id_column`` and ``label_column``.
    key, passphrase
        The worker's private key.
    source : str
        How messages name the file (e.g. ``<sha>:data/labels.csv.gpg``).

    Returns
    -------
    LabelsFile

    Raises
    ------
    LabelsError
        (a :class:`DatasetError`) naming the file and the problem: unreadable, no id column,
        an empty label, an id given twice (its data row, never its value).
    """
    name = source or str(enc_path)
    try:
        with decrypted_dataset(enc_path, key, passphrase, label_column=label_column) as ds:
            ids = normalize_ids(_ids_from_features(ds.features_path, ds.format, id_column, name))
            values = ds.labels
            if len(ids) != len(values):  # pragma: no cover - the splitter keeps rows aligned
                raise LabelsError(f"{name}: {len(ids)} ids for {len(values)} labels")
            count, row = first_repeat(ids, ds.source_rows)
            if count:
                raise LabelsError(f"{name}: {count} id(s) are given more than once (data row "
                                  f"{row} is the first repeat); each row is labelled once")
            return LabelsFile(name, dict(zip(ids.tolist(), values.tolist())))
    except LabelsError:
        raise
    except DatasetError as exc:
        raise LabelsError(str(exc).replace(str(enc_path), name)) from None


@dataclass(frozen=True)
class Match:
    """Labels matched to the evaluated rows (in the service's row order)."""

    labels: np.ndarray = field(repr=False)   # object array: the label, or None (unlabelled)
    labelled: np.ndarray = field(repr=False)  # bool
    missing: np.ndarray = field(repr=False)   # positions of rows that need a label and have none
    unmatched: int = 0                        # labels whose id is not among the evaluated rows

    def missing_ids(self, ids: np.ndarray) -> list[str]:
        return [str(ids[i]) for i in self.missing]


def match_labels(ids: np.ndarray, needed: np.ndarray, labels: LabelsFile | None) -> Match:
    """Match the labels file to the evaluated rows by id.

    Parameters
    ----------
    ids : array of str
        The evaluated rows' ids (:func:`normalize_ids`), in the order scored.
    needed : array of bool
        Rows whose label the decision needs (the models disagree there).
    labels : LabelsFile or None
        The owners' labels (None: no labels file committed yet).

    Returns
    -------
    Match
        ``missing`` lists the rows that need a label and have none (the caller asks the
        owners for them, or refuses with :func:`missing_error`).
    """
    have = dict(labels.labels) if labels is not None else {}
    out = np.empty(len(ids), dtype=object)
    labelled = np.zeros(len(ids), dtype=bool)
    for i, rid in enumerate(ids.tolist()):
        if rid in have:
            out[i], labelled[i] = have[rid], True
    missing = np.flatnonzero(np.asarray(needed, dtype=bool) & ~labelled)
    unmatched = len(set(have) - set(ids.tolist()))
    return Match(out, labelled, missing, unmatched)


def missing_error(source: str, count: int, disagreements: int) -> LabelsError:
    """The refusal when rows that need a label have none (a count, never the ids)."""
    return LabelsError(f"{source}: {count} of the {disagreements} rows where the two models disagree have "
                       "no label; the owners have been sent their ids")


def typed_labels(match: Match) -> np.ndarray:
    """The matched labels with one numpy type (ints, floats or text), None where unlabelled
    (an object array when some rows are unlabelled, as ``decide`` expects)."""
    vals = [v for v, ok in zip(match.labels.tolist(), match.labelled.tolist()) if ok]
    typed = _to_label_array(np.asarray([str(v) for v in vals])) if vals else np.asarray([])
    if match.labelled.all():
        return typed
    out = np.empty(len(match.labels), dtype=object)
    out[match.labelled] = list(typed.tolist())
    return out
