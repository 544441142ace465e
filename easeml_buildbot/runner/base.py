"""The runner contract: resource limits, the result of a run, and why a model failed.

Limits come from the operator (``EASEML_*`` environment variables on the worker, or the
master's settings); a repository's ``model:`` section may only lower them, never raise
them, because the repository is written by the people whose code is being sandboxed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: Every cause a :class:`ModelError` can carry (stable strings, shown to developers).
CAUSES: dict[str, str] = {
    "dockerfile_missing": "the repository has no Dockerfile at the configured path",
    "build_failed": "the model image did not build",
    "build_timeout": "the model image took longer than the build time limit to build",
    "crash": "the model exited with an error",
    "timeout": "the model ran longer than the time limit and was killed",
    "oom": "the model used more memory than the limit and was killed",
    "no_predictions": "the model exited without writing predictions",
    "wrong_count": "the model wrote a different number of predictions than input rows",
    "unparsable": "the model's predictions file could not be parsed",
    "label_type_mismatch": "the predictions are not of the labels' type",
    "output_too_large": "the model wrote more output than allowed",
    "bad_model_config": "the repository's model: section is invalid",
}


class ModelError(Exception):
    """The model under test failed; ``cause`` is one of :data:`CAUSES`.

    ``log`` holds the bounded build and run log collected so far (never labels: the model
    never sees them, but the run part can hold whatever the model printed about the
    features, so it is for owners and operators only). ``build_log`` is the image build's
    part alone (it never saw the test set), ``stderr`` the model's bounded stderr.
    ``spent`` is true once a model process was started with the features: from then on the
    model has seen them, whatever happens next. ``timings`` the phases that ran.
    """

    def __init__(self, cause: str, message: str, *, log: str = "",
                 timings: Mapping[str, float] | None = None, spent: bool = False) -> None:
        super().__init__(f"{cause}: {message}")
        self.cause = cause
        self.message = message
        self.log = log
        self.build_log = ""
        self.stderr = ""
        self.spent = spent
        self.timings = dict(timings or {})


class RunnerUnavailable(Exception):
    """The runner itself cannot work (no Docker daemon, base image missing): infrastructure,
    not the model's fault. ``spent``: a model had already been started with the features."""

    spent = False


@dataclass(frozen=True)
class RunResult:
    """What a successful run produced: one prediction per input row, in input order.

    ``log``: build and run output (owners/operators only, see :class:`ModelError`);
    ``build_log``: the image build's part alone."""

    predictions: np.ndarray
    log: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    build_log: str = ""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(value: Any, *, default_unit: str = "m") -> int:
    """``512m``/``2g``/``1.5GiB``/``1073741824`` -> bytes; bare numbers use ``default_unit``."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        return int(value * _UNITS[default_unit])
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 512m or 2g)")
    unit = m.group(2).lower() or default_unit
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Limits:
    """What a model may use. Defaults are the operator's defaults (docs/model-contract.md)."""

    memory: int = 2 << 30            # bytes of RAM (swap is not allowed on top)
    cpus: float = 1.0                # CPU cores
    pids: int = 256                  # processes + threads
    timeout: float = 600.0           # seconds of wall time for the model run
    build_timeout: float = 900.0     # seconds of wall time for the image build
    build_disk: int = 10 << 30       # bytes the build may add to its base images (layers)
    tmpfs: int = 256 << 20           # bytes of scratch space at /tmp
    output: int = 256 << 20          # bytes the model may write to /easeml/output (in all)
    log_bytes: int = 64 << 10        # bytes of build log and of run log kept (head + tail)
    user: str = "65534:65534"        # uid:gid the model runs as when the image names none (or root)
    stderr_lines: int = 20           # tail of a failed run's stderr the developer may see ...
    stderr_bytes: int = 2048         # ... at most this many lines and bytes (0: none)
    gpus: int = 0                    # operator: GPUs of this worker; after lowered_by: granted (-1 all)

    # operator environment variable -> field (the repo's model: section uses the field names)
    _ENV = {
        "EASEML_MEMORY": "memory", "EASEML_CPUS": "cpus", "EASEML_PIDS": "pids",
        "EASEML_TIMEOUT": "timeout", "EASEML_BUILD_TIMEOUT": "build_timeout",
        "EASEML_BUILD_DISK": "build_disk",
        "EASEML_TMPFS": "tmpfs", "EASEML_OUTPUT_LIMIT": "output",
        "EASEML_LOG_BYTES": "log_bytes", "EASEML_RUN_USER": "user",
        "EASEML_WORKER_GPUS": "gpus",
        "EASEML_STDERR_TAIL_LINES": "stderr_lines", "EASEML_STDERR_TAIL_BYTES": "stderr_bytes",
    }
    LOWERABLE = ("memory", "cpus", "pids", "timeout", "build_timeout", "build_disk", "tmpfs",
                 "output")

    @staticmethod
    def _convert(name: str, value: Any) -> Any:
        if name in ("memory", "tmpfs", "output", "log_bytes", "stderr_bytes", "build_disk"):
            return parse_bytes(value, default_unit="" if name in ("log_bytes", "stderr_bytes") else "m")
        if name == "stderr_lines":
            v = int(value)
            if v < 0:
                raise ValueError(f"must be 0 or more, got {value!r}")
            return v
        if name == "user":
            return numeric_user(value)
        if name == "gpus":
            from easeml_buildbot.gpus import parse_offer
            return parse_offer(value, "gpus")
        if name in ("cpus", "timeout", "build_timeout"):
            v = float(value)
        elif name == "pids":
            v = int(value)
        else:
            return str(value)
        if v <= 0:
            raise ValueError(f"must be positive, got {value!r}")
        return v

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 settings: Mapping[str, Any] | None = None) -> "Limits":
        """Operator limits: built-in defaults, then ``settings`` (e.g. the master's
        ``[limits]`` table, keys as field names), then ``EASEML_*`` variables."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for key, value in (settings or {}).items():
            if key not in {f.name for f in dataclasses.fields(cls)} or key == "gpus":
                raise ValueError(f"limits: unknown key {key!r}" + (
                    " (GPUs belong to a worker: EASEML_WORKER_GPUS)" if key == "gpus" else ""))
            values[key] = cls._convert(key, value)
        for var, name in cls._ENV.items():
            if env.get(var, "").strip():
                try:
                    values[name] = cls._convert(name, env[var])
                except ValueError as exc:
                    raise ValueError(f"{var}: {exc}") from None
        return cls(**values)

    def lowered_by(self, model: Mapping[str, Any] | None) -> "Limits":
        """Apply a repository's ``model:`` section: each limit it names becomes
        ``min(operator, repo)``; asking for more than the operator allows is not an error,
        the operator's limit simply stays."""
        model = model or {}
        values: dict[str, Any] = {}
        for name in self.LOWERABLE:
            if name not in model or model[name] is None:
                continue
            try:
                asked = self._convert(name, model[name])
            except (TypeError, ValueError) as exc:
                raise ModelError("bad_model_config", f"model.{name}: {exc}") from None
            values[name] = min(getattr(self, name), asked)
        values["gpus"] = self._granted_gpus(model.get("gpus"))
        return dataclasses.replace(self, **values)

    def _granted_gpus(self, asked: Any) -> int:
        """``model.gpus`` against this worker's GPUs: a model gets none unless it asks, and
        asking for more than the worker has is an error (the master schedules GPU builds on
        workers that advertise enough, so this is a mis-scheduled build, not a silent CPU run)."""
        from easeml_buildbot.gpus import describe, parse_request, satisfies

        try:
            request = parse_request(asked)
        except ValueError as exc:
            raise ModelError("bad_model_config", f"model.gpus: {exc}") from None
        if request and not satisfies(self.gpus, request):
            raise ModelError("bad_model_config", f"model.gpus asks for {describe(request)}; this "
                             f"worker has {self.gpus} (EASEML_WORKER_GPUS)")
        return request

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def numeric_user(value: Any) -> str:
    """The operator's run user as ``uid:gid``, both numeric and neither 0 (a name would be
    looked up in the model's own image, which the developer writes)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", str(value))
    if not m:
        raise ValueError(f"must be a numeric uid:gid, got {value!r}")
    uid = int(m.group(1))
    gid = int(m.group(2)) if m.group(2) is not None else uid
    if uid == 0 or gid == 0:
        raise ValueError(f"must not be root (uid or gid 0), got {value!r}")
    return f"{uid}:{gid}"


def stderr_tail(text: str, lines: int, nbytes: int) -> str:
    """The last ``lines`` lines of ``text``, at most ``nbytes`` bytes of UTF-8 (cut at a line
    start where possible): what a developer may see of a failed run's stderr."""
    if lines <= 0 or nbytes <= 0 or not text:
        return ""
    kept = text.rstrip("\n").split("\n")[-lines:]
    out = "\n".join(kept).encode("utf-8")
    if len(out) > nbytes:
        out = out[-nbytes:]
        nl = out.find(b"\n")
        if 0 <= nl < len(out) - 1:
            out = out[nl + 1:]
    return out.decode("utf-8", errors="ignore")


def model_path(repo_dir: Path, relative: str, field_name: str) -> Path:
    """Resolve a path from the ``model:`` section inside the checkout (no escaping it)."""
    root = Path(repo_dir).resolve()
    p = (root / str(relative)).resolve()
    if p != root and root not in p.parents:
        raise ModelError("bad_model_config", f"model.{field_name}: {relative!r} leaves the repository")
    return p


class ModelRunner(Protocol):
    """Builds/starts the model of a checkout and returns its predictions for the features."""

    def predict(self, repo_dir: str | os.PathLike[str], features_path: str | os.PathLike[str], *,
                tag: str, model: Mapping[str, Any], limits: Limits,
                n_rows: int | None = None) -> RunResult: ...


class BoundedLog:
    """Collects streamed text keeping at most ``limit`` characters (head and tail), so a
    model that prints gigabytes cannot fill the worker's memory or the build log."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, int(limit))
        self._head: list[str] = []
        self._head_len = 0
        self._tail: list[str] = []
        self._tail_len = 0
        self.total = 0

    def write(self, text: str) -> None:
        if not text:
            return
        self.total += len(text)
        room = self.limit // 3 - self._head_len
        if room > 0:
            self._head.append(text[:room])
            self._head_len += len(self._head[-1])
            text = text[room:]
        if not text:
            return
        keep = self.limit - self.limit // 3
        self._tail.append(text[-keep:] if keep else "")
        self._tail_len += len(self._tail[-1])
        while self._tail and self._tail_len - len(self._tail[0]) >= keep:
            self._tail_len -= len(self._tail.pop(0))

    def getvalue(self) -> str:
        head = "".join(self._head)
        tail = "".join(self._tail)
        keep = self.limit - self.limit // 3
        if len(tail) > keep:
            tail = tail[-keep:]
        cut = self.total - len(head) - len(tail)
        if self.limit == 0 and self.total:
            return f"[log suppressed: {self.total} characters]\n"
        return head + (f"\n[... {cut} characters cut ...]\n" if cut > 0 else "") + tail
