"""The host-side directories a run uses: the features the model may read, the output it
may write. Shared by the Docker and the process runner."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from easeml_buildbot.runner.base import ModelError

CONTAINER_INPUT_DIR = "/easeml/input"
CONTAINER_OUTPUT_DIR = "/easeml/output"


def run_base_dir() -> str | None:
    """``EASEML_RUN_DIR``: where run directories are made. When the worker itself runs in a
    container and talks to the host's Docker daemon, this must be a path that is the same
    inside the worker and on the host (a shared volume)."""
    base = os.environ.get("EASEML_RUN_DIR", "").strip()
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
        return base
    return None


def count_rows(features_path: Path) -> int:
    """Number of input rows (csv: records after the header; jsonl: non-empty lines;
    npz: length of the first array)."""
    ext = features_path.suffix[1:].lower()
    if ext == "csv":
        with features_path.open(newline="", encoding="utf-8") as fh:
            return max(0, sum(1 for row in csv.reader(fh) if row) - 1)
    if ext in ("jsonl", "ndjson"):
        with features_path.open(encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    if ext == "npz":
        try:
            with np.load(features_path, allow_pickle=False) as z:
                return int(z[z.files[0]].shape[0]) if z.files else 0
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{features_path}: unreadable npz ({exc})") from None
    if ext == "npy":
        return int(np.load(features_path, allow_pickle=False, mmap_mode="r").shape[0])
    if ext == "json":
        return len(json.loads(features_path.read_text()))
    raise ValueError(f"{features_path}: unknown features format {ext!r}")


@dataclass
class Workspace:
    """``root/input/features.<ext>`` (read-only copy) and ``root/output/`` (empty, writable
    by any uid since the model runs as an unprivileged user)."""

    root: Path
    features: Path
    output: Path
    n_rows: int

    @classmethod
    def create(cls, features_path: str | os.PathLike[str], prefix: str,
               n_rows: int | None = None) -> "Workspace":
        """``n_rows``: the caller's row count (custody knows it from the split); counted
        from the file only when not given, since that means parsing all of it."""
        src = Path(features_path)
        if not src.is_file():
            raise FileNotFoundError(f"{src}: features file not found")
        if n_rows is None:
            n_rows = count_rows(src)
        # easeml-run-PID-XXXX: holds a copy of the features, so a sweep (custody.gpghome.
        # sweep_stale, run by `easeml worker evaluate` at start and by its watchdog) removes
        # it once this process is dead, however it died
        root = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=run_base_dir()))
        try:
            inp, out = root / "input", root / "output"
            inp.mkdir()
            out.mkdir()
            feats = inp / f"features{src.suffix.lower()}"
            shutil.copyfile(src, feats)  # a copy, so the model can never touch custody's file
            os.chmod(feats, 0o444)
            os.chmod(inp, 0o755)
            os.chmod(out, 0o777)
            os.chmod(root, 0o700)  # the daemon (root) mounts through it; other users cannot
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(root=root, features=feats, output=out, n_rows=n_rows)

    def output_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.output):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        return total

    def check_output_size(self, limit: int) -> None:
        size = self.output_bytes()
        if size > limit:
            raise ModelError("output_too_large",
                             f"the model wrote {size} bytes to the output directory (limit {limit})")

    def remove(self) -> None:
        # The model may have made read-only dirs in output/; make them removable first.
        for dirpath, dirs, _files in os.walk(self.root):
            for d in dirs:
                try:
                    os.chmod(os.path.join(dirpath, d), 0o700)
                except OSError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)
