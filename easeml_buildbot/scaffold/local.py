"""``easeml run-local``: the model contract on the data scientist's machine.

It runs the same runner the CI worker runs (``ProcessRunner``, or ``DockerRunner`` with
``--docker``) on a plaintext dev set, so a broken Dockerfile, a crash or a wrong number of
predictions shows up before the push instead of spending a use of the hidden test set.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from easeml_buildbot.runner.base import Limits, ModelError, ModelRunner, RunnerUnavailable
from easeml_buildbot.runner.evaluate import make_runner as runner_of

FORMATS = ("csv", "jsonl", "npz")


class LocalRunError(Exception):
    """A user error: message names the file and what is wrong."""


@dataclass(frozen=True)
class LocalReport:
    runner: str
    n_rows: int
    predictions: np.ndarray
    timings: Mapping[str, float]
    accuracy: float | None = None
    label_source: str | None = None
    error: str | None = None
    log: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def render(self, show: int = 5) -> str:
        lines = [f"runner: {self.runner}"]
        if self.error:
            lines.append(f"model error: {self.error}")
            if self.log.strip():
                lines.append("model log (tail):")
                lines.extend("  " + ln for ln in self.log.strip().splitlines()[-20:])
            return "\n".join(lines)
        lines.append(f"predictions: {len(self.predictions)} for {self.n_rows} rows (one per row, in order)")
        if show > 0:
            lines.append(f"first {min(show, len(self.predictions))}: {[_py(p) for p in self.predictions[:show]]}")
        if self.timings:
            lines.append("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()
                                                  if isinstance(v, (int, float))))
        if self.accuracy is not None:
            lines.append(f"accuracy on the dev set ({self.label_source}): {self.accuracy:.4f}")
        else:
            lines.append("accuracy: no labels (pass --labels, or keep the label column in the file)")
        return "\n".join(lines)


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _format_of(path: Path) -> str:
    ext = path.suffix.lstrip(".").lower()
    if ext not in FORMATS:
        raise LocalRunError(f"{path}: unsupported format {path.suffix or '(none)'!r}; use .csv, .jsonl or .npz")
    return ext


def split_dev_set(features: Path, label_column: str, out_dir: Path) -> tuple[Path, np.ndarray | None]:
    """Copy ``features`` to ``out_dir`` without ``label_column``; return (path, labels or None).

    The model must never see labels, locally either: run-local feeds it what the worker would.
    """
    fmt = _format_of(features)
    out = out_dir / f"features.{fmt}"
    try:
        if fmt == "csv":
            with features.open(newline="") as f:
                rows = list(csv.reader(f))
            if not rows:
                raise LocalRunError(f"{features}: empty file (expected a header row)")
            header, body = rows[0], rows[1:]
            labels = None
            if label_column in header:
                i = header.index(label_column)
                labels = np.asarray([r[i] for r in body])
                header = header[:i] + header[i + 1:]
                body = [r[:i] + r[i + 1:] for r in body]
            with out.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                w.writerows(body)
            return out, labels
        if fmt == "jsonl":
            records = []
            with features.open() as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise LocalRunError(f"{features}:{lineno}: not JSON: {exc.msg}") from None
            labels = None
            if records and all(isinstance(r, dict) and label_column in r for r in records):
                labels = np.asarray([r.pop(label_column) for r in records])
            with out.open("w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            return out, labels
        with np.load(features, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        labels = arrays.pop(label_column, None)
        if labels is None and "labels" in arrays:
            labels = arrays.pop("labels")
        np.savez(out, **arrays)
        return out, labels
    except OSError as exc:
        raise LocalRunError(f"{features}: {exc.strerror or exc}") from None


def read_labels(path: Path, label_column: str) -> np.ndarray:
    """Labels from .npy, .jsonl (one value per line) or .csv/.txt (one per line, optional header)."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        text = path.read_text()
    except (OSError, ValueError) as exc:
        raise LocalRunError(f"{path}: cannot read labels: {exc}") from None
    if path.suffix == ".jsonl":
        values = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    values.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise LocalRunError(f"{path}:{lineno}: not JSON: {exc.msg}") from None
        return np.asarray(values)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    rows = list(csv.reader(lines))
    if rows and label_column in rows[0]:
        i = rows[0].index(label_column)
        short = next((n for n, r in enumerate(rows[1:], 2) if len(r) <= i), None)
        if short is not None:
            raise LocalRunError(f"{path}: row {short} has no {label_column!r} column")
        return np.asarray([r[i] for r in rows[1:]])
    if rows and len(rows[0]) == 1 and rows[0][0] in ("label", "labels", "y", "target"):
        rows = rows[1:]
    return np.asarray([r[0] for r in rows])


def _normalise(a: np.ndarray) -> np.ndarray:
    """Labels read from text are strings; compare numerically whenever both sides are numbers."""
    a = np.asarray(a)
    if a.dtype.kind in "iufb":
        return a.astype(float)
    try:
        return a.astype(float)
    except (TypeError, ValueError):
        return a.astype(str)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    p, y = _normalise(predictions), _normalise(labels)
    if p.dtype.kind != y.dtype.kind:
        p, y = p.astype(str), y.astype(str)
    return float(np.mean(p == y)) if len(y) else float("nan")


def _load_model_config(repo_dir: Path, config_path: Path | None) -> tuple[Mapping[str, Any], str]:
    path = config_path or repo_dir / ".easeml.yml"
    if not path.exists():
        raise LocalRunError(f"{path}: no .easeml.yml (run `easeml init --existing` to add one)")
    from easeml_buildbot.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise LocalRunError(str(exc)) from None
    return dict(cfg.model or {}), cfg.label_column


def _limits(timeout: float | None) -> Limits:
    """The operator limits a worker here would apply (``EASEML_*`` variables), with ``--timeout``."""
    try:
        limits = Limits.from_env()
    except ValueError as exc:
        raise LocalRunError(str(exc)) from None
    if timeout is None:
        return limits
    if not timeout > 0:
        raise LocalRunError(f"--timeout: must be positive, got {timeout:g}")
    return dataclasses.replace(limits, timeout=timeout)


RUNNER_NOTES = {"docker": "docker (the image is built from the Dockerfile, no network)",
                "process": "process (a local subprocess: not a sandbox)"}


def make_runner(docker: bool) -> tuple[ModelRunner, str]:
    """The runner the CI worker would use: Docker when asked (and reachable), else a process."""
    kind = "docker" if docker else "process"
    try:
        return runner_of(kind), RUNNER_NOTES[kind]
    except RunnerUnavailable as exc:
        raise LocalRunError(f"--docker: {exc}") from None


def _require_base_images(runner: ModelRunner, repo_dir: Path, model: dict) -> None:
    """The scaffold's base image must be on this machine (a worker, and so run-local, never
    pulls it): say how to build it instead of failing in the build. Other images are the
    runner's to judge (its message names the operator's allow-list)."""
    import docker.errors

    from easeml_buildbot.runner.base import model_path
    from easeml_buildbot.runner.dockerfile import DockerfileError, parse
    from easeml_buildbot.scaffold.cli import BASE_IMAGE

    dockerfile = model_path(repo_dir, str(model.get("dockerfile") or "Dockerfile"), "dockerfile")
    if not dockerfile.is_file():
        return  # the runner reports dockerfile_missing with its cause name
    try:
        uses = parse(dockerfile.read_text(encoding="utf-8", errors="replace"),
                     path=dockerfile.name).base_images()
    except DockerfileError:
        return  # the runner reports it as build_failed
    for use in uses:
        if use.ref != BASE_IMAGE:
            continue
        try:
            runner.client.images.get(use.ref)  # type: ignore[attr-defined]
        except docker.errors.ImageNotFound:
            raise LocalRunError(
                f"{dockerfile.name}:{use.line}: base image {use.ref!r} is not on this machine; build "
                "it once with `easeml base-image` (plain `docker build` of a small Dockerfile shipped "
                "with easeml: Debian bookworm + python3 + numpy, what the service's workers have)"
            ) from None
        except docker.errors.APIError:
            return


def run_local(*, repo_dir: Path, features: Path, labels: Path | None = None,
              config_path: Path | None = None, docker: bool = False,
              timeout: float | None = None) -> LocalReport:
    repo_dir = Path(repo_dir).resolve()
    if not repo_dir.is_dir():
        raise LocalRunError(f"{repo_dir}: not a directory")
    if not features.exists():
        raise LocalRunError(f"{features}: no such file")
    model, label_column = _load_model_config(repo_dir, config_path)
    limits = _limits(timeout)
    runner, runner_name = make_runner(docker)
    if docker:
        _require_base_images(runner, repo_dir, model)
    with tempfile.TemporaryDirectory(prefix="easeml-run-local-") as tmp:
        feats, y = split_dev_set(features, label_column, Path(tmp))
        label_source = f"column {label_column!r}" if y is not None else None
        if labels is not None:
            y, label_source = read_labels(labels, label_column), str(labels)
        try:
            result = runner.predict(repo_dir, feats, tag=f"easeml-local-{repo_dir.name.lower()}",
                                    model=model, limits=limits)
        except RunnerUnavailable as exc:
            raise LocalRunError(f"the {runner_name.split()[0]} runner cannot run here: {exc}") from None
        except ModelError as exc:
            return LocalReport(runner=runner_name, n_rows=0, predictions=np.asarray([]), timings={},
                               error=f"{exc.cause}: {exc.message}", log=exc.log)
    preds = np.asarray(result.predictions)
    acc = None
    if y is not None:
        if len(y) != len(preds):
            raise LocalRunError(f"{labels or features}: {len(y)} labels for {len(preds)} predictions")
        acc = accuracy(preds, y)
    return LocalReport(runner=runner_name, n_rows=len(preds), predictions=preds,
                       timings=dict(result.timings or {}), accuracy=acc,
                       label_source=label_source, log=result.log)
