"""Encrypted test sets: encrypt to the service key, identify by ciphertext hash, decrypt
into a private temporary directory, split features from labels.

The plaintext exists only inside a 0700 directory (on tmpfs when ``/dev/shm`` is writable)
for the duration of a ``with decrypted_dataset(...)`` block; the model gets
``features_path`` (the label column removed), the scorer gets ``labels`` (in memory only).
Every failure raises :class:`DatasetError` with a message naming the file and the problem,
and never the content of a row; in every case the directory is wiped before returning.

Row order rule (:mod:`easeml_buildbot.custody.rows`): the rows used and their order are a
pseudo-random permutation fixed per test set (keyed by the ciphertext and plaintext hashes),
whatever order the owner wrote the file in; ``rows=N`` uses the first N rows of that order,
and features and labels come out in the same order. The plaintext is read once; only the
selected rows are kept.

Messages never quote a value of the test set (not even the header line, which in a
headerless file is a data row): they name the file, lines, columns by position and counts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from easeml_buildbot.custody.keys import KeysError, private_key_material
from easeml_buildbot.custody.gpghome import (
    MIN_S2K_COUNT, on_tmpfs, overwrite_file, private_tmpdir, remove_tree, secure_tmp_base, sweep_stale,
    temporary_gpg,
)
from easeml_buildbot.custody.rows import RowSelection, object_array, plaintext_digest, row_order_key, selection_order

FORMATS = ("csv", "jsonl", "npz")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".npz": "npz"}
_ENCRYPTED_SUFFIXES = (".gpg", ".pgp", ".asc")
_GPG_CRYPTO_ARGS = ["--cipher-algo", "AES256", "--compress-algo", "none"]


class DatasetError(Exception):
    """The test set cannot be used; the message names the file and the reason (never data)."""


class DatasetKeyError(DatasetError):
    """The test set could not be decrypted: a missing or wrong private key or passphrase, or a
    test set encrypted to another key. An operator's or owner's key problem, not the data's."""


class DatasetTooSmall(DatasetError):
    """The test set has fewer rows than the condition needs (``needed``, ``have``)."""

    def __init__(self, message: str, *, needed: int, have: int) -> None:
        super().__init__(message)
        self.needed, self.have = int(needed), int(have)


@dataclass(frozen=True)
class DecryptedDataset:
    """A decrypted, split test set; valid only inside its ``with`` block."""

    features_path: Path
    labels: np.ndarray = field(repr=False)
    n_rows: int
    dataset_id: str
    format: str
    feature_names: tuple[str, ...] = ()
    #: for each row given to the model, its 0-based position among the file's data rows
    source_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)


def dataset_id(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the ciphertext: the identity the ledger counts uses against."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read test set: {exc.strerror}") from None


def format_from_name(path: str | os.PathLike[str]) -> str | None:
    """``data/test.csv.gpg`` -> ``csv``; None when the name does not say."""
    name = Path(path).name.lower()
    for suffix in _ENCRYPTED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _EXTENSIONS.get(Path(name).suffix)


def _sniff_format(plain: Path, hint: str | None) -> str:
    with open(plain, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if hint in ("csv", "jsonl"):
        return hint
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


def _looks_like_openpgp(head: bytes) -> bool:
    if head.startswith(b"-----BEGIN PGP MESSAGE-----"):
        return True
    # Binary OpenPGP: the first octet is a packet tag (bit 7 set); PKESK (tag 1) or SKESK (3).
    if not head or not head[0] & 0x80:
        return False
    tag = (head[0] & 0x3F) if head[0] & 0x40 else ((head[0] >> 2) & 0x0F)
    return tag in (1, 3)


def _open_private(path: Path, mode: str = "w", **kwargs):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode, **kwargs)


def _import_public_key(gpg, key_path: Path) -> str:
    if not key_path.is_file():
        raise DatasetError(f"{key_path}: public key file not found")
    data = key_path.read_bytes()
    if b"PRIVATE KEY" in data:
        raise DatasetError(f"{key_path}: this is a private key; encrypt to the public key (easeml_pub.asc)")
    res = gpg.import_keys(data)
    if not res.fingerprints:
        raise DatasetError(f"{key_path}: no OpenPGP public key found in this file")
    return res.fingerprints[0]


def encrypt_dataset(
    pub_key_path: str | os.PathLike[str],
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> str:
    """Encrypt ``in_path`` to the service's public key (AES-256, binary, no compression).

    The output is written atomically (``OUT.tmp`` then rename). Returns the dataset id.
    """
    src, dst, key = Path(in_path), Path(out_path), Path(pub_key_path)
    if not src.is_file():
        raise DatasetError(f"{src}: test set not found")
    with open(src, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise DatasetError(f"{src}: test set is empty")
    if _looks_like_openpgp(head):
        raise DatasetError(f"{src}: already an OpenPGP message; refusing to encrypt it twice")
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        with temporary_gpg() as gpg:
            fpr = _import_public_key(gpg, key)
            res = gpg.encrypt_file(
                str(src), recipients=[fpr], armor=False, always_trust=True,
                output=str(tmp), extra_args=list(_GPG_CRYPTO_ARGS),
            )
            if not res.ok:
                raise DatasetError(f"{src}: gpg could not encrypt: {res.status or 'unknown error'}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dataset_id(dst)


# ------------------------------------------------------------------ decryption

def _gpg_failure(enc: Path, key: Path, res) -> DatasetError:
    """Translate gpg's status lines into one clear sentence (no data, no key material)."""
    err = res.stderr or ""
    if "NO_SECKEY" in err and "DECRYPTION_OKAY" not in err:
        ids = sorted({line.split()[2] for line in err.splitlines()
                      if line.startswith("[GNUPG:] NO_SECKEY") and len(line.split()) > 2})
        return DatasetKeyError(
            f"{enc}: encrypted to a different key (key id {', '.join(ids) or '?'}), "
            f"not to the worker's key {key}; re-encrypt the test set with this service's easeml_pub.asc"
        )
    if "BAD_PASSPHRASE" in err or "Bad passphrase" in err:
        return DatasetKeyError(
            f"{key}: wrong passphrase for the private key "
            "(check --passphrase-file or EASEML_KEY_PASSPHRASE)"
        )
    if "NEED_PASSPHRASE" in err or res.status == "need passphrase" or "MISSING_PASSPHRASE" in err or "No passphrase given" in err or "PINENTRY_LAUNCHED" in err:
        return DatasetKeyError(
            f"{key}: the private key is passphrase-protected and no passphrase was given "
            "(use --passphrase-file or set EASEML_KEY_PASSPHRASE)"
        )
    if "NODATA" in err:  # the header was an OpenPGP packet, so the rest is damaged
        return DatasetError(
            f"{enc}: decryption failed: the file is truncated or corrupted "
            "(no complete OpenPGP message); restore it from the repository"
        )
    if "BADMDC" in err or "DECRYPTION_FAILED" in err or "invalid packet" in err.lower() \
            or "premature" in err.lower() or "unexpected" in err.lower():
        return DatasetError(
            f"{enc}: decryption failed: the file is corrupted or truncated "
            "(integrity check did not pass); restore it from the repository"
        )
    return DatasetKeyError(f"{enc}: decryption failed ({res.status or 'gpg exit ' + str(res.returncode)})")


class _HashingReader:
    """Feeds gpg and hashes the same bytes: the dataset id costs no second read of the file."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "rb")
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._hash.update(data)
        self.bytes_read += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._fh.close()


def _decrypt_to(enc: Path, key: Path, passphrase: str | None, plain: Path) -> str:
    """Decrypt ``enc`` into ``plain`` (0600); return the SHA-256 of the ciphertext read."""
    if not key.is_file():
        raise DatasetKeyError(f"{key}: private key file not found")
    try:  # also ease.ml/ci's easeml_sec.asc (public + private block)
        key_data = private_key_material(key.read_bytes(), key)
    except KeysError as exc:
        raise DatasetKeyError(str(exc)) from None
    with temporary_gpg(s2k_count=MIN_S2K_COUNT) as gpg:  # short path: agent socket limit
        res = gpg.import_keys(key_data, passphrase=passphrase)
        del key_data
        if not getattr(res, "sec_imported", 0) and not getattr(res, "sec_read", 0):
            raise DatasetKeyError(f"{key}: no OpenPGP private key found in this file")
        with _open_private(plain, "wb"):
            pass  # create 0600 so gpg (which truncates, keeping the mode) writes a private file
        # loopback even without a passphrase: never pop up a pinentry on a worker
        extra = None if passphrase is not None else ["--pinentry-mode", "loopback"]
        reader = _HashingReader(enc)
        try:
            res = gpg.decrypt_file(reader, passphrase=passphrase, output=str(plain), extra_args=extra)
            size = os.fstat(reader._fh.fileno()).st_size
        finally:
            reader.close()
        ok = res.ok and res.returncode == 0 and "DECRYPTION_OKAY" in (res.stderr or "")
        if ok and "BADMDC" not in res.stderr and "DECRYPTION_FAILED" not in res.stderr:
            # gpg stops at the end of the OpenPGP message: hash any trailing bytes too
            return reader.hexdigest() if reader.bytes_read == size else dataset_id(enc)
        raise _gpg_failure(enc, key, res)


def _to_label_array(values: list | np.ndarray) -> np.ndarray:
    """Integers if every label is one, else floats, else strings (the scorer compares them)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "US":
        for dtype in (np.int64, np.float64):
            try:
                return arr.astype(dtype)
            except ValueError:
                continue
        if arr.dtype.kind == "S":
            arr = np.char.decode(arr, "utf-8")
    return arr


_FAST_CHUNK = 16 << 20


class _NotSimple(Exception):
    """The fast CSV path met something it does not handle; the csv module takes over."""


@dataclass(frozen=True)
class _LabelChunk:
    """The label bytes cut from one chunk: each ",label" (or "label," for column 0)."""

    removed: np.ndarray  # uint8
    widths: np.ndarray   # bytes per label, separator included
    first_column: bool

    def as_bytes(self) -> list[bytes]:
        parts = self.removed.tobytes().split(b",")
        return parts[:-1] if self.first_column else parts[1:]

    def as_array(self) -> np.ndarray:
        """The label bytes as a numpy bytes array (fixed width without a Python object each)."""
        if not len(self.widths):
            return np.empty(0, dtype="S1")
        w = int(self.widths[0])
        if (self.widths == w).all():
            mat = self.removed.reshape(len(self.widths), w)
            mat = mat[:, :-1] if self.first_column else mat[:, 1:]
            return np.ascontiguousarray(mat).view(f"S{w - 1}").ravel()
        return np.array(self.as_bytes())


def _cut_chunk(buf: bytes, idx: int, ncols: int) -> tuple[bytes, _LabelChunk]:
    """Remove column ``idx`` from every line of ``buf`` (complete, unquoted lines) with numpy.

    Comma positions reshape to (lines, ncols-1) exactly when every line has ncols fields;
    the label bytes are then a run-length mask away. Anything irregular raises _NotSimple.
    """
    arr = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    commas = np.flatnonzero(arr == 44)
    if len(commas) != len(nl) * (ncols - 1):
        raise _NotSimple
    per_line = np.diff(np.searchsorted(commas, nl), prepend=0)
    if len(per_line) and (per_line != ncols - 1).any():
        raise _NotSimple
    grid = commas.reshape(len(nl), ncols - 1)
    if idx == ncols - 1:
        lo, hi = grid[:, idx - 1], nl              # ",label" before the newline
    elif idx == 0:
        lo = np.concatenate(([0], nl[:-1] + 1))    # "label," at the line start
        hi = grid[:, 0] + 1
    else:
        lo, hi = grid[:, idx - 1], grid[:, idx]    # ",label" in the middle
    widths = hi - lo
    if (widths == 1).any():  # an empty label: let the csv module say on which line
        raise _NotSimple
    # runs: keep [prev_hi, lo), drop [lo, hi) per line, keep the tail
    bounds = np.empty(2 * len(lo) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, len(arr)
    bounds[1:-1:2], bounds[2:-1:2] = lo, hi
    pattern = np.zeros(len(bounds) - 1, dtype=bool)
    pattern[1::2] = True
    mask = np.repeat(pattern, np.diff(bounds))
    return arr[~mask].tobytes(), _LabelChunk(arr[mask], widths, idx == 0)


def _split_csv_fast(fh, sel: RowSelection, idx: int, ncols: int) -> None:
    """Stream the body of an unquoted, LF-terminated CSV through :func:`_cut_chunk`."""
    rest = b""
    while True:
        block = fh.read(_FAST_CHUNK)
        data = rest + block
        if not block:
            if data and not data.endswith(b"\n"):
                data += b"\n"
            rest = b""
        else:
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
        if data:
            if b'"' in data or b"\r" in data:
                raise _NotSimple
            feats, labs = _cut_chunk(data, idx, ncols)
            k = len(labs.widths)
            keep = sel.take(k)
            if len(keep) == k:
                records = feats.split(b"\n")
                records.pop()  # after the last newline
                sel.put(records, labs.as_array())
            elif len(keep):  # slice out only the rows still in the running
                ends = np.flatnonzero(np.frombuffer(feats, dtype=np.uint8) == 10)
                starts = np.concatenate(([0], ends[:-1] + 1))
                sel.put([feats[a:b] for a, b in zip(starts[keep].tolist(), ends[keep].tolist())],
                        labs.as_array()[keep])
            else:
                sel.put([], labs.as_array()[keep])
        if not block:
            return


def _too_few(src: Path, rows: int | None, have: int) -> None:
    if have == 0:
        raise DatasetError(f"{src}: the test set has no rows")
    if rows is not None and have < rows:
        raise DatasetTooSmall(f"{src}: needs {rows} samples, the test set has {have}", needed=rows, have=have)


def _no_label_column(name: Path, label: str, header: list[str], first_line: bytes) -> DatasetError:
    """The header lacks the label column. The header is never quoted: in a headerless file
    it is the first data row."""
    hint = ""
    if b"\t" in first_line:
        hint = ("; the first line contains tabs: test sets are comma-separated CSV "
                "(convert a TSV file to CSV with a header row)")
    fields = f"{len(header)} field{'s' if len(header) != 1 else ''}"
    return DatasetError(
        f"{name}: line 1: label column '{label}' not in the CSV header ({fields}); the first "
        f"line must be a header naming every column, with '{label}' for the labels{hint}"
    )


def _csv_reason(exc: csv.Error) -> str:
    """What the csv module found wrong, without quoting any of the file."""
    msg = str(exc)
    if "field limit" in msg:
        return f"a field is longer than the limit of {csv.field_size_limit()} characters"
    if "NUL" in msg:
        return "the line contains a NUL byte"
    if "new-line" in msg or "newline" in msg:
        return "a line break inside an unquoted field"
    return "malformed quoting"


def _split_csv(plain: Path, out: Path, label: str, rows: int | None, name: Path, key: int):
    """Fast path (numpy over bytes) for plain CSV; the csv module for quotes, CRLF, errors."""
    with open(plain, "rb") as fh:
        header_line = fh.readline()
        try:
            header = next(csv.reader([header_line.decode("utf-8-sig")]))
        except (StopIteration, UnicodeDecodeError, csv.Error):
            header = []
        header = [h.strip() for h in header]
        if label in header and len(header) > 1 and b'"' not in header_line and b"\r" not in header_line:
            idx = header.index(label)
            sel = RowSelection(key, rows)
            try:
                _split_csv_fast(fh, sel, idx, len(header))
            except (_NotSimple, UnicodeDecodeError):
                pass  # the csv module handles it, or names the line/byte that is wrong
            else:
                records, labels, source = sel.finish()
                names = tuple(h for i, h in enumerate(header) if i != idx)
                with _open_private(out, "wb") as dst:
                    dst.write((",".join(names) + "\n").encode("utf-8"))
                    if records:
                        dst.write(b"\n".join(records))
                        dst.write(b"\n")
                return _to_label_array(labels), names, source
    return _split_csv_slow(plain, out, label, rows, name, key)


_BATCH = 8192


def _split_csv_slow(plain: Path, out: Path, label: str, rows: int | None, name: Path, key: int):
    sel = RowSelection(key, rows)
    with open(plain, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{name}: the test set is empty (no CSV header)") from None
        except csv.Error as exc:
            raise DatasetError(f"{name}: line {reader.line_num}: malformed CSV ({_csv_reason(exc)})") from None
        header = [h.strip() for h in header]
        if label not in header:
            with open(plain, "rb") as raw:
                first = raw.readline()
            raise _no_label_column(name, label, header, first)
        idx = header.index(label)
        ncols = len(header)
        feature_names = tuple(h for i, h in enumerate(header) if i != idx)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        recs: list[str] = []
        labs: list[str] = []
        try:
            for row in reader:
                if len(row) != ncols:
                    if not row:
                        continue
                    raise DatasetError(
                        f"{name}: line {reader.line_num}: {len(row)} fields, the header has {ncols}"
                    )
                value = row.pop(idx)
                if value == "":
                    raise DatasetError(f"{name}: line {reader.line_num}: empty label "
                                       f"in column '{label}' (column {idx + 1})")
                labs.append(value)
                writer.writerow(row)
                recs.append(buf.getvalue())
                buf.seek(0)
                buf.truncate()
                if len(recs) >= _BATCH:
                    sel.add(recs, object_array(labs))
                    recs, labs = [], []
        except csv.Error as exc:
            raise DatasetError(f"{name}: line {reader.line_num}: malformed CSV ({_csv_reason(exc)})") from None
        sel.add(recs, object_array(labs))
    records, labels, source = sel.finish()
    with _open_private(out, "w", newline="", encoding="utf-8") as dst:
        csv.writer(dst, lineterminator="\n").writerow(feature_names)
        dst.writelines(records)
    return _to_label_array(labels.tolist()), feature_names, source


# json's own messages (C scanner) quote nothing of the input; any other becomes a generic one
_JSON_MESSAGES = frozenset({
    "Expecting value", "Expecting ',' delimiter", "Expecting ':' delimiter",
    "Expecting property name enclosed in double quotes", "Extra data",
    "Unterminated string starting at", "Invalid control character at", "Invalid \\escape",
    "Invalid \\uXXXX escape", "Illegal trailing comma before end of object",
    "Illegal trailing comma before end of array",
})


def _split_jsonl(plain: Path, out: Path, label: str, rows: int | None, name: Path, key: int):
    sel = RowSelection(key, rows)
    names: dict[str, None] = {}
    recs: list[str] = []
    labs: list = []
    with open(plain, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                why = exc.msg if exc.msg in _JSON_MESSAGES else "syntax error"
                raise DatasetError(f"{name}: line {lineno}: not valid JSON ({why}, "
                                   f"column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{name}: line {lineno}: expected a JSON object per line")
            if label not in obj:
                raise DatasetError(f"{name}: line {lineno}: label field '{label}' missing")
            value = obj.pop(label)
            if value is None or isinstance(value, (dict, list)):
                raise DatasetError(f"{name}: line {lineno}: label field '{label}' must be a scalar")
            labs.append(value)
            for k in obj:
                names.setdefault(k)
            recs.append(json.dumps(obj, separators=(",", ":")) + "\n")
            if len(recs) >= _BATCH:
                sel.add(recs, object_array(labs))
                recs, labs = [], []
    sel.add(recs, object_array(labs))
    records, label_arr, source = sel.finish()
    with _open_private(out, "w", encoding="utf-8") as dst:
        dst.writelines(records)
    labels = label_arr.tolist()
    if labels and all(isinstance(v, bool) for v in labels):
        return np.asarray(labels, dtype=bool), tuple(names), source
    return _to_label_array(labels), tuple(names), source


def _split_npz(plain: Path, out: Path, label: str, rows: int | None, name: Path, key: int):
    try:
        with np.load(plain, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{name}: not a readable NPZ archive ({type(exc).__name__})") from None
    if label not in arrays:
        raise DatasetError(
            f"{name}: no label array named '{label}' in the NPZ archive ({len(arrays)} arrays)"
        )
    labels = arrays.pop(label)
    if labels.ndim != 1:
        raise DatasetError(f"{name}: label array '{label}' must be one-dimensional, has shape {labels.shape}")
    if not arrays:
        raise DatasetError(f"{name}: the NPZ archive has no feature arrays besides '{label}'")
    n = len(labels)
    for pos, a in enumerate(arrays.values(), 1):
        if a.ndim == 0 or a.shape[0] != n:
            raise DatasetError(
                f"{name}: feature array {pos} of {len(arrays)} has {a.shape[0] if a.ndim else 0} rows, "
                f"the label array has {n}"
            )
    _too_few(name, rows, n)
    order = selection_order(key, n, rows)
    with _open_private(out, "wb") as dst:
        np.savez(dst, **{k: a[order] for k, a in arrays.items()})
    return labels[order], tuple(arrays), order


_SPLITTERS = {"csv": _split_csv, "jsonl": _split_jsonl, "npz": _split_npz}


def split_plaintext(plain: Path, features_out: Path, *, fmt: str, label_column: str,
                    rows: int | None, order_key: int, name: Path | None = None,
                    ) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Split a plaintext test set: features to ``features_out`` (0600) and labels, both in the
    row order of ``order_key`` (:mod:`~easeml_buildbot.custody.rows`), ``rows`` of them.

    Returns (labels, feature names, the file position of each row used)."""
    if fmt not in _SPLITTERS:
        raise DatasetError(f"{name or plain}: unknown test-set format {fmt!r} (use {', '.join(FORMATS)})")
    try:
        labels, names, source = _SPLITTERS[fmt](plain, features_out, label_column, rows,
                                                name or plain, order_key)
    except UnicodeDecodeError:
        raise DatasetError(f"{name or plain}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DatasetError(f"{name or plain}: malformed CSV ({_csv_reason(exc)})") from None
    _too_few(name or plain, rows, len(labels))
    return labels, names, source


def check_plaintext(path: str | os.PathLike[str], *, label_column: str = "label",
                    fmt: str | None = None) -> tuple[str, int]:
    """Validate a plaintext test set before encrypting it; returns (format, rows)."""
    src = Path(path)
    if not src.is_file():
        raise DatasetError(f"{src}: test set not found")
    fmt = fmt or _sniff_format(src, _EXTENSIONS.get(src.suffix.lower()))
    work = private_tmpdir("check", secure_tmp_base())
    try:
        labels, _, _ = split_plaintext(src, work / "features", fmt=fmt, label_column=label_column,
                                       rows=None, order_key=0, name=src)  # order irrelevant here
        return fmt, len(labels)
    finally:
        remove_tree(work)


@contextmanager
def decrypted_dataset(
    enc_path: str | os.PathLike[str],
    priv_key_path: str | os.PathLike[str],
    passphrase: str | None = None,
    label_column: str = "label",
    rows: int | None = None,
    *,
    format: str | None = None,  # noqa: A002 - the public name of the field
    tmp_dir: str | os.PathLike[str] | None = None,
) -> Iterator[DecryptedDataset]:
    """Decrypt ``enc_path`` with the worker's private key and split it; wipe all on exit."""
    enc, key = Path(enc_path), Path(priv_key_path).expanduser()
    if rows is not None and (not isinstance(rows, int) or rows <= 0):
        raise DatasetError(f"{enc}: rows must be a positive integer, got {rows!r}")
    if format is not None and format not in FORMATS:
        raise DatasetError(f"{enc}: unknown test-set format {format!r} (use {', '.join(FORMATS)})")
    if not enc.is_file():
        raise DatasetError(f"{enc}: encrypted test set not found")
    with open(enc, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise DatasetError(f"{enc}: the encrypted test set is empty")
    if not _looks_like_openpgp(head):
        raise DatasetError(
            f"{enc}: not an OpenPGP encrypted file (is it the plaintext test set? "
            "encrypt it with 'easeml dataset encrypt')"
        )
    # plaintext + features ~ 2x the ciphertext (no compression), plus headroom
    base = Path(tmp_dir) if tmp_dir is not None else secure_tmp_base(
        min_free=int(2.5 * enc.stat().st_size) + (16 << 20))
    sweep_stale(base)  # plaintext left by a process that was killed mid-evaluation
    work = private_tmpdir("ds", base)
    try:
        plain = work / "plaintext"
        ds_id = _decrypt_to(enc, key, passphrase, plain)
        fmt = format or _sniff_format(plain, format_from_name(enc))
        features = work / f"features.{fmt}"
        key = row_order_key(ds_id, plaintext_digest(plain))
        labels, names, source = split_plaintext(plain, features, fmt=fmt, label_column=label_column,
                                                rows=rows, order_key=key, name=enc)
        _wipe_file(plain)  # the labels now live in memory only
        yield DecryptedDataset(
            features_path=features, labels=labels, n_rows=len(labels), dataset_id=ds_id,
            format=fmt, feature_names=names, source_rows=source,
        )
    finally:
        remove_tree(work)


def _wipe_file(path: Path) -> None:
    if not on_tmpfs(path):
        overwrite_file(path)
    path.unlink(missing_ok=True)


def write_decrypted(ds: DecryptedDataset, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Operator debugging: copy features and labels out of the private directory (0600 files),
    in the order the service uses, plus ``rows.txt``: the file's data-row number (1-based,
    header not counted) of each row."""
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    feats = out / f"features.{ds.format}"
    labels = out / ("labels.npy" if ds.format == "npz" else "labels.txt")
    with open(ds.features_path, "rb") as src, _open_private(feats, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    with _open_private(labels, "wb") as dst:
        if ds.format == "npz":
            np.save(dst, ds.labels, allow_pickle=False)
        else:
            dst.write("".join(f"{v}\n" for v in ds.labels.tolist()).encode("utf-8"))
    with _open_private(out / "rows.txt", "wb") as dst:
        dst.write("".join(f"{i + 1}\n" for i in ds.source_rows.tolist()).encode("ascii"))
    return feats, labels
