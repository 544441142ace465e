"""Which rows of a test set are used, and in which order.

Every row ``i`` of a test set (0-based, in file order) gets a 64-bit rank ``r_i``: output
``i`` of a Philox-4x64 stream (a keyed counter-based generator, Salmon et al. 2011) whose
128-bit key is derived from the ciphertext's SHA-256 *and* the plaintext's SHA-256. A use
that needs ``N`` rows takes the ``N`` rows of smallest rank, ordered by rank (ties, which
have probability ~N²/2⁶⁵, by file position). Hence

* the order is a (pseudo-)uniformly random permutation of the rows, the same on every use
  of the same ciphertext and independent of how the owner wrote the file (sorted by class,
  by date, ...); the ``N`` rows used are a uniformly random ``N``-subset;
* the ``M``-row selection is the first ``M`` rows of the ``N``-row selection for every
  ``M <= N`` (ranks do not depend on ``N``), so a cached run of ``N`` rows serves a request
  for ``M`` rows;
* the key is secret from whoever does not know the whole plaintext: the ciphertext id alone
  is public (the ``.gpg`` file is in the repository), and a developer who knew the
  permutation could map each row the model sees back to its file position, which for a
  file stored sorted by class is its label.

Selection streams: :class:`RowSelection` keeps at most ``2N + 65536`` candidate rows while
the file is read once, then the ``N`` of smallest rank.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

ROW_ORDER_VERSION = "prf1"  # part of the predictions cache key: a new rule, new cache entries
_DOMAIN = b"easeml-buildbot row order v1\0"
_PRUNE_SLACK = 1 << 16


def plaintext_digest(path: str | os.PathLike[str]) -> bytes:
    """SHA-256 of the decrypted test set (streamed)."""
    with open(Path(path), "rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def row_order_key(dataset_id: str, plain_digest: bytes) -> int:
    """The 128-bit Philox key of a test set: SHA-256(domain, ciphertext id, plaintext SHA-256)."""
    h = hashlib.sha256(_DOMAIN + bytes.fromhex(dataset_id) + plain_digest).digest()
    return int.from_bytes(h[:16], "big")


def row_ranks(key: int, n: int) -> np.ndarray:
    """The ranks of rows 0..n-1 (uint64); row ``i``'s rank does not depend on ``n``."""
    return np.random.Philox(key=key).random_raw(n)


def selection_order(key: int, n: int, rows: int | None) -> np.ndarray:
    """Indices (into 0..n-1) of the ``rows`` rows used, in the order used."""
    ranks = row_ranks(key, n)
    take = n if rows is None else min(rows, n)
    idx = np.arange(n) if take == n else np.argpartition(ranks, take - 1)[:take]
    return idx[np.lexsort((idx, ranks[idx]))]


class RowSelection:
    """Streaming selection: offer rows in file order, get the selected ones in rank order.

    ``records`` are any per-row objects (the feature line as ``bytes``/``str``); labels are a
    numpy array per batch (concatenated at the end, so use one dtype family per file).
    """

    def __init__(self, key: int, rows: int | None) -> None:
        self._bg = np.random.Philox(key=key)
        self.rows = rows
        self.count = 0  # rows offered so far
        self._ranks: list[np.ndarray] = []
        self._index: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._records: list[np.ndarray] = []  # object arrays (fancy indexing beats a list's)
        self._held = 0
        self._threshold: int | None = None  # the rows-th smallest rank once that many are held
        self._pending = (np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64))

    def _next_ranks(self, k: int) -> np.ndarray:
        return self._bg.random_raw(k)

    def take(self, k: int) -> np.ndarray:
        """Rank the next ``k`` rows; return the positions (0..k-1) among them that can still be
        selected. Give their records and labels to :meth:`put` (the rest need not be built:
        a row ranked above the ``rows``-th smallest rank so far can never be used)."""
        ranks = np.asarray(self._next_ranks(k), dtype=np.uint64)
        index = np.arange(self.count, self.count + k, dtype=np.int64)
        self.count += k
        keep = np.arange(k) if self._threshold is None else np.flatnonzero(ranks < self._threshold)
        self._pending = (ranks[keep], index[keep])
        return keep

    def put(self, records: list[Any], labels: np.ndarray) -> None:
        ranks, index = self._pending
        if len(records) != len(ranks) or len(labels) != len(ranks):
            raise AssertionError(f"{len(ranks)} rows taken, {len(records)} records, {len(labels)} labels")
        if not len(ranks):
            return
        self._ranks.append(ranks)
        self._index.append(index)
        self._labels.append(labels)
        self._records.append(object_array(records))
        self._held += len(ranks)
        if self.rows is not None and self._held > 2 * self.rows + _PRUNE_SLACK:
            self._prune(self.rows)

    def add(self, records: list[Any], labels: np.ndarray) -> None:
        """:meth:`take` and :meth:`put` for rows already built."""
        keep = self.take(len(records))
        if len(keep) == len(records):
            self.put(records, labels)
        else:
            self.put([records[i] for i in keep.tolist()], labels[keep])

    def _prune(self, keep: int) -> None:
        if not self._held:
            return
        ranks = np.concatenate(self._ranks)
        index = np.concatenate(self._index)
        n = len(ranks)
        sel = np.arange(n) if keep >= n else np.argpartition(ranks, keep - 1)[:keep]
        order = sel[np.lexsort((index[sel], ranks[sel]))]
        self._records = [np.concatenate(self._records)[order]]
        self._labels = [np.concatenate(self._labels)[order]]
        self._ranks, self._index = [ranks[order]], [index[order]]
        self._held = len(order)
        if self.rows is not None and self._held >= self.rows:
            self._threshold = int(ranks[order[-1]])

    def finish(self) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """(records, labels, file row indices) of the selected rows, in the order used."""
        self._prune(self.count if self.rows is None else self.rows)
        if not self._held:
            return [], np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
        return self._records[0].tolist(), self._labels[0], self._index[0]


def object_array(values: list[Any]) -> np.ndarray:
    """A 1-D object array holding ``values`` as they are (no numpy type coercion)."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr
