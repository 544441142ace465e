"""Reading what a model wrote, and making it comparable with the labels.

Formats (one prediction per input row, in input order):
  csv    one column, or a header row with a column named ``prediction``
  txt    one value per line
  jsonl  one JSON scalar per line, or an object with a ``prediction`` key
  npy    a 1-D array (or n x 1)
  npz    an array named ``predictions`` (or ``prediction``), or the archive's only array
Anything else, or a different row count, is a :class:`ModelError` that names the line.

Messages quote nothing the model wrote (no file names other than ``predictions.<ext>``, no
array names, no values, no library message that could echo the file): a model that has read
the features must not be able to carry them out through an error. Label checks name kinds
("integers", "text"), never a label or a dtype width.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np

from easeml_buildbot.runner.base import ModelError

FORMATS = ("csv", "jsonl", "npy", "npz", "txt")
HEADER_NAMES = ("prediction", "predictions")
MAX_BYTES = 1 << 30


def find_predictions(out_dir: Path) -> Path:
    """The single ``predictions.<ext>`` the model wrote into ``out_dir``."""
    found = sorted(p for p in Path(out_dir).glob("predictions.*") if p.suffix[1:] in FORMATS)
    if not found:
        others = sum(1 for _ in Path(out_dir).iterdir())
        hint = f" (found {others} other file{'s' if others != 1 else ''})" if others else ""
        raise ModelError("no_predictions",
                         f"no predictions.<{'|'.join(FORMATS)}> in the output directory{hint}")
    if len(found) > 1:
        raise ModelError("unparsable", f"{len(found)} predictions files: "
                         + ", ".join(p.name for p in found))  # predictions.<ext>: fixed names
    return found[0]


def _scalar(value: object, where: str) -> object:
    if isinstance(value, (bool, int, float, str)):
        return value
    raise ModelError("unparsable", f"{where}: a prediction must be a number or a string, "
                     f"got {type(value).__name__}")


def _coerce(values: list[object]) -> np.ndarray:
    """Text values -> int64 or float64 when every one parses, else str."""
    if values and all(isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=bool)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64 if all(isinstance(v, int) for v in values) else np.float64)
    strings = [str(v).strip() for v in values]
    for dtype in (np.int64, np.float64):
        try:
            return np.asarray(strings).astype(dtype) if strings else np.asarray([], dtype=dtype)
        except (ValueError, OverflowError):
            continue
    return np.asarray(strings, dtype=str)


def _read_csv(path: Path) -> list[object]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    col = 0
    if rows and any(c.strip().lower() in HEADER_NAMES for c in rows[0]):
        header = [c.strip().lower() for c in rows[0]]
        col = next(i for i, c in enumerate(header) if c in HEADER_NAMES)
        rows = rows[1:]
        start = 2
    else:
        start = 1
    out: list[object] = []
    for i, row in enumerate(rows, start):
        if not any(c.strip() for c in row):
            raise ModelError("unparsable", f"{path.name}: line {i}: empty prediction")
        if col == 0 and len(row) != 1:
            raise ModelError("unparsable", f"{path.name}: line {i}: {len(row)} fields; write one "
                             "prediction per line or add a header with a 'prediction' column")
        if len(row) <= col or row[col].strip() == "":
            raise ModelError("unparsable", f"{path.name}: line {i}: empty prediction")
        out.append(row[col])
    return out


def _read_txt(path: Path) -> list[object]:
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise ModelError("unparsable", f"{path.name}: line {i}: empty prediction")
    return list(lines)


def _read_jsonl(path: Path) -> list[object]:
    out: list[object] = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                raise ModelError("unparsable", f"{path.name}: line {i}: not JSON") from None
            if isinstance(value, dict):
                key = next((k for k in value if k in HEADER_NAMES), None)
                if key is None:
                    raise ModelError("unparsable", f"{path.name}: line {i}: object without a "
                                     "'prediction' key")
                value = value[key]
            out.append(_scalar(value, f"{path.name}: line {i}"))
    return out


def _array(a: np.ndarray, where: str) -> np.ndarray:
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ModelError("unparsable", f"{where}: expected a 1-D array, got shape {a.shape}")
    if a.dtype.kind not in "biufUS":
        raise ModelError("unparsable", f"{where}: unsupported array type (kind '{a.dtype.kind}'; "
                         "use numbers, booleans or strings)")
    if a.dtype.kind == "S":
        a = a.astype(str)
    return a


def _read_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ModelError("unparsable", f"{path.name}: not a readable .npy file "
                         f"({type(exc).__name__})") from None
    if not isinstance(a, np.ndarray):
        raise ModelError("unparsable", f"{path.name}: not a .npy array")
    return _array(a, path.name)


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            key = next((k for k in ("predictions", "prediction") if k in names), None)
            if key is None and len(names) == 1:
                key = names[0]
            if key is None:
                raise ModelError("unparsable", f"{path.name}: no array named 'predictions' "
                                 f"({len(names)} arrays)")
            a = z[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError("unparsable", f"{path.name}: not a readable .npz file "
                         f"({type(exc).__name__})") from None
    return _array(a, f"{path.name}[{key if key in ('predictions', 'prediction') else 'its only array'}]")


def parse_predictions(path: str | Path, n_rows: int) -> np.ndarray:
    """Parse ``path`` into a 1-D array of ``n_rows`` predictions (int, float, bool or str)."""
    p = Path(path)
    ext = p.suffix[1:].lower()
    if ext not in FORMATS:
        raise ModelError("unparsable", f"{p.name}: unknown format (use {', '.join(FORMATS)})")
    if p.stat().st_size > MAX_BYTES:
        raise ModelError("output_too_large", f"{p.name}: {p.stat().st_size} bytes")
    try:
        if ext == "npy":
            arr = _read_npy(p)
        elif ext == "npz":
            arr = _read_npz(p)
        else:
            reader = {"csv": _read_csv, "txt": _read_txt, "jsonl": _read_jsonl}[ext]
            arr = _coerce(reader(p))
    except UnicodeDecodeError as exc:
        raise ModelError("unparsable", f"{p.name}: not UTF-8 text at byte {exc.start}") from None
    except csv.Error as exc:
        from easeml_buildbot.custody.dataset import _csv_reason
        raise ModelError("unparsable", f"{p.name}: malformed CSV ({_csv_reason(exc)})") from None
    if len(arr) != n_rows:
        raise ModelError("wrong_count", f"{p.name}: {len(arr)} predictions for {n_rows} input rows")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ModelError("unparsable", f"{p.name}: row {bad + 1}: not a finite number")
    return arr


def _as_text(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.asarray([str(int(v)) if float(v).is_integer() else repr(float(v)) for v in a], dtype=str)
    return a.astype(str)


def align_to_labels(predictions: np.ndarray, labels: np.ndarray, *, who: str = "model") -> np.ndarray:
    """Make ``predictions`` comparable with ``labels`` by ``==``, or raise
    ``label_type_mismatch`` (e.g. class names predicted for numeric labels).

    Messages name types only, never a label value.
    """
    p, y = np.asarray(predictions), np.asarray(labels)
    pk, yk = p.dtype.kind, y.dtype.kind
    numeric = "biuf"
    if pk in numeric and yk in numeric:
        if yk in "iub" and pk == "f" and not np.all(np.mod(p, 1) == 0):
            raise ModelError("label_type_mismatch", f"the {who} predicted non-integer numbers "
                             "for integer class labels")
        return p
    if pk in "U" and yk in "U":
        return np.char.strip(p)
    if yk in "U" and pk in numeric:
        return _as_text(p)  # e.g. labels '3' read as text, predictions 3
    if yk in numeric and pk in "U":
        raise ModelError("label_type_mismatch", f"the {who} predicted text but the labels are numbers")
    raise ModelError("label_type_mismatch", f"the {who}'s predictions ({_KINDS.get(pk, 'other')}) "
                     f"cannot be compared with the labels ({_KINDS.get(yk, 'other')})")


_KINDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "U": "text", "S": "text"}
