"""Worker-side evaluation of one pull request: the logic behind ``easeml worker inspect``
and ``easeml worker evaluate`` (the master's build steps run those commands).

Everything that decides *how* to evaluate (``.easeml.yml``, the encrypted test set) is read
with ``git cat-file`` from the **default branch's accepted commit** (``config_rev``; the
local forge passes the base), never from the pull request or the branch it targets, so a
pull request cannot change its own test. The old model ``o`` comes from ``base``.
The models are exported from the exact commits with ``git archive``.

Use-of-test-set rule (docs/model-contract.md): ``spent`` is true as soon as a model was
started with the features (a container or a process-runner process), whatever happens next
(crash, timeout, OOM, missing, bad or miscounted predictions), and of course when ``decide``
returned a verdict (``scored``). A model that saw the features may have copied them out in
any way it likes, so its run is a look at the test set; the master commits such a use.
``spent`` is false only when no model saw the features: configuration or test-set errors,
an image that did not build, a runner that is not available. Only then is the reserved
ledger use released.

What a developer may read: the build log (``echo``) gets the image build output (no test
set is in reach of a build) and progress lines, never the model's stdout or stderr. After a
failed run it gets at most the last ``limits.stderr_lines`` lines / ``limits.stderr_bytes``
bytes of the model's stderr, and only under an adaptivity that shows the developer a
verdict at all. The full (bounded) build and run logs go into the result (``logs``), which
the master keeps in its private directory and the ledger: owners and operators only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from easeml_buildbot.runner.base import Limits, ModelError, ModelRunner, RunnerUnavailable, stderr_tail
from easeml_buildbot.runner.predictions import align_to_labels

CONFIG_FILE = ".easeml.yml"


class GitError(Exception):
    """A ref or path could not be read from the repository."""


def _git(repo: Path, *args: str) -> bytes:
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True)
    if res.returncode != 0:
        msg = res.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(msg[-1] if msg else f"git {' '.join(args)} failed")
    return res.stdout


def resolve(repo: Path, ref: str) -> str:
    """The full sha of ``ref`` (a commit)."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except GitError:
        raise GitError(f"{repo}: no commit {ref!r} (was the base branch fetched?)") from None


class TooLarge(GitError):
    """A blob is larger than its reader allows (checked before it is read)."""


def show(repo: Path, sha: str, path: str, max_bytes: int | None = None) -> bytes | None:
    """The bytes of ``path`` at commit ``sha``, or None when it does not exist there (or is
    not a file). With ``max_bytes``, a larger blob raises :class:`TooLarge` without being read.

    One ``git cat-file --batch`` (it was ``-t``, ``-s`` and ``blob``: three processes per file,
    a few per build): its header gives the type and size before any content is read, and a
    blob that is too large is left unread in the pipe when git is stopped."""
    if any(c in path or c in sha for c in "\0\n") or path.endswith("\r") or sha.endswith("\r"):
        # not a name git's batch input carries as given (it ends a name at NUL, drops a
        # trailing CR and reads a line per name): no such file is ours to read
        return None
    proc = subprocess.Popen(["git", "-C", str(repo), "cat-file", "--batch"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        try:
            proc.stdin.write(f"{sha}:{path}\n".encode("utf-8", "surrogateescape"))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # git ended early (not a repository): no answer, as for a missing file
        # "<oid> blob <size>", or "<name> missing" / "ambiguous" (also a path with spaces)
        parts = proc.stdout.readline(4096).split()
        if len(parts) == 3 and parts[1] == b"blob" and parts[2].isdigit():
            size = int(parts[2])
            if max_bytes is not None and size > max_bytes:
                raise TooLarge(f"{sha[:12]}:{path}: {size} bytes; at most {max_bytes} are read")
            data = proc.stdout.read(size)
            if len(data) != size:
                raise GitError(f"{sha[:12]}:{path}: git cat-file ended after {len(data)} of {size} bytes")
            return data
        return None  # missing, not a blob (a tree, a submodule), not one object, or no answer
    finally:
        if proc.poll() is None:
            proc.kill()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        proc.wait()


# tarfile's extraction filters arrived in 3.11.4 (and 3.8.17, 3.9.17, 3.10.12); Debian
# bookworm's python3 (the worker image) is 3.11.2, so check by hand there.
_TAR_FILTER_ERRORS = (getattr(tarfile, "FilterError", ValueError), ValueError)


def _extract_safely(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files, directories and in-tree links only (tarfile's "data" filter)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = os.path.realpath(dest)

    def inside(p: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(p)]) == root

    members = []
    for m in tar.getmembers():
        target = os.path.join(root, m.name)
        if os.path.isabs(m.name) or not inside(target):
            raise ValueError(f"{m.name!r} is outside the destination")
        if m.issym() and not inside(os.path.join(os.path.dirname(target), m.linkname)):
            raise ValueError(f"{m.name!r} links outside the destination")
        if m.islnk() and not inside(os.path.join(root, m.linkname)):
            raise ValueError(f"{m.name!r} hard-links outside the destination")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise ValueError(f"{m.name!r} is a special file")
        m.mode = (m.mode & 0o755) | (0o644 if m.isfile() else 0o755 if m.isdir() else 0)
        m.uid = m.gid = 0
        m.uname = m.gname = ""
        members.append(m)
    tar.extractall(dest, members=members)


def export_commit(repo: Path, sha: str, dest: Path) -> Path:
    """Extract the tree of ``sha`` (no .git, no untracked files) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as tf:
        proc = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha],
                              stdout=tf, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise GitError(f"git archive {sha[:12]}: {proc.stderr.decode('utf-8', 'replace').strip()}")
        tf.seek(0)
        with tarfile.open(fileobj=tf) as tar:
            try:
                _extract_safely(tar, dest)
            except _TAR_FILTER_ERRORS as exc:
                raise ModelError("build_failed", f"commit {sha[:12]}: unsafe file in the tree "
                                 f"({exc}); links must stay inside the repository") from None
    return dest


def load_base_config(repo: Path, base: str):
    """(EasemlConfig, None) or (None, error message) for ``.easeml.yml`` at ``base`` (the
    default branch's accepted commit: the configuration's source)."""
    from easeml_buildbot.config import MAX_CONFIG_BYTES, ConfigError, parse_config

    try:
        text = show(repo, base, CONFIG_FILE, max_bytes=MAX_CONFIG_BYTES)
    except TooLarge as exc:
        return None, f"{exc}: a configuration may have at most {MAX_CONFIG_BYTES} bytes"
    if text is None:
        return None, f"{base[:12]}:{CONFIG_FILE}: no {CONFIG_FILE} on the default branch"
    try:
        return parse_config(text.decode("utf-8"), source=f"{base[:12]}:{CONFIG_FILE}"), None
    except UnicodeDecodeError:
        return None, f"{base[:12]}:{CONFIG_FILE}: not UTF-8 text"
    except ConfigError as exc:
        return None, str(exc)


def protected_changes(repo: Path, base: str, head: str, paths: list[str]) -> list[str]:
    """Which of ``paths`` the pull request changes (diff from the merge base to head)."""
    try:
        out = _git(repo, "diff", "--name-only", "--no-renames", f"{base}...{head}", "--", *paths)
    except GitError:
        out = _git(repo, "diff", "--name-only", "--no-renames", base, head, "--", *paths)
    return sorted({ln for ln in out.decode().splitlines() if ln})


def inspect_repo(repo: str | os.PathLike[str], base: str, head: str | None = None, *,
                 config_rev: str | None = None, base_ref: str | None = None,
                 default_branch: str | None = None, plan: bool = True) -> dict[str, Any]:
    """What ``easeml worker inspect`` writes (see TEAM.md).

    ``base`` is the old model ``o`` (the pull request's base or the accepted commit) and the
    point the protected-files diff starts from; ``config_rev`` (default: ``base``) is where
    ``.easeml.yml`` and the test set are read: the default branch's accepted commit. With
    ``base_ref`` and ``default_branch``, a pull request into a branch that is neither the
    default branch nor listed under ``branches:`` of that configuration is not evaluated
    (``not_evaluated`` says why; nothing else is needed from the test set).

    ``plan=False`` leaves ``samples_needed`` None: the master plans (it has SciPy loaded; the
    estimator's planning import costs a worker command seconds per build), with the same
    answer and the same error text (``{source}: condition: ...``).
    """
    repo_p = Path(repo)
    out: dict[str, Any] = {"ok": False, "error": None, "config": {}, "dataset_id": None,
                           "samples_needed": 0, "protected_changed": [], "base": None, "head": None,
                           "config_rev": None, "not_evaluated": None}
    try:
        base_sha = resolve(repo_p, base)
        head_sha = resolve(repo_p, head) if head else None
        config_sha = resolve(repo_p, config_rev) if config_rev else base_sha
    except GitError as exc:
        out["error"] = str(exc)
        return out
    out["base"], out["head"], out["config_rev"] = base_sha, head_sha, config_sha
    if head_sha:  # the head commit's author (mail to the developer; the build's last step read it before)
        try:
            out["author_email"] = _git(repo_p, "log", "-1", "--format=%ae", head_sha).decode(
                "utf-8", "replace").strip()[:320] or None
        except GitError:
            pass
    cfg, err = load_base_config(repo_p, config_sha)
    dataset = cfg.dataset if cfg else "data/test.csv.gpg"
    if head_sha:
        protected = [CONFIG_FILE, dataset] + ([cfg.labels] if cfg and cfg.labels else [])
        out["protected_changed"] = protected_changes(repo_p, base_sha, head_sha, protected)
    if cfg is None:
        out["error"] = err
        return out
    if base_ref is not None and default_branch and not cfg.evaluates_branch(base_ref, default_branch):
        # no configuration in the answer: nothing of the test applies (no GPUs, no owners)
        out["not_evaluated"] = (
            f"pull requests into '{base_ref}' are not evaluated: only the default branch "
            f"'{default_branch}' and the branches listed under 'branches:' in its {CONFIG_FILE} "
            f"({', '.join(cfg.branches) or 'none'}) are")
        return out
    out["config"] = cfg.to_dict()
    if not plan:
        out["samples_needed"] = None
    else:
        try:
            out["samples_needed"] = int(cfg.required_samples().rows)
        except ValueError as exc:
            out["error"] = f"{cfg.source}: condition: {exc}"
            return out
    blob = show(repo_p, config_sha, dataset)
    if blob is None:
        out["error"] = (f"{config_sha[:12]}:{dataset}: no encrypted test set on the default branch "
                        "(encrypt one with `easeml dataset encrypt` and commit it)")
        return out
    out["dataset_id"] = hashlib.sha256(blob).hexdigest()
    out["ok"] = True
    return out


# ------------------------------------------------------------------ predictions cache

@dataclass(frozen=True)
class PredictionCache:
    """Predictions per (commit, dataset id, model section) on the worker's disk. A cached
    run of N rows serves any request for its first M <= N rows: the M-row selection is the
    prefix of the N-row one (custody/rows.py). The row rule's version is part of the key, so
    predictions made under another row order are never served."""

    root: Path

    def _path(self, commit: str, dataset_id: str, model: Mapping[str, Any]) -> Path:
        from easeml_buildbot.custody.rows import ROW_ORDER_VERSION

        key = hashlib.sha256(json.dumps(dict(model), sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.root / commit / f"{dataset_id}-{ROW_ORDER_VERSION}-{key}.npy"

    def get(self, commit: str, dataset_id: str, model: Mapping[str, Any], rows: int) -> np.ndarray | None:
        p = self._path(commit, dataset_id, model)
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        return arr[:rows] if arr.ndim == 1 and len(arr) >= rows else None

    def put(self, commit: str, dataset_id: str, model: Mapping[str, Any], preds: np.ndarray) -> bool:
        """Store atomically; a cache that cannot be written only costs a rerun later."""
        if self.get(commit, dataset_id, model, len(preds)) is not None:
            return True  # a run at least as long is cached: keep it
        p = self._path(commit, dataset_id, model)
        arr = np.asarray(preds)
        if arr.dtype.kind == "O":
            arr = arr.astype(str)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            os.replace(tmp, p)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return False


# ------------------------------------------------------------------------ evaluate

def make_runner(kind: str) -> ModelRunner:
    if kind == "docker":
        from easeml_buildbot.runner.docker_runner import DockerRunner
        return DockerRunner()
    if kind == "process":
        from easeml_buildbot.runner.process_runner import ProcessRunner
        return ProcessRunner()
    raise ValueError(f"unknown runner {kind!r} (use docker or process)")


def _result(status: str, *, cause: str | None = None, message: str = "", scored: bool = False,
            spent: bool = False, **extra: Any) -> dict[str, Any]:
    """The ``result.json`` document. ``scored``: a verdict was computed from the labels.
    ``spent``: a model saw the features (always true when scored); the master commits the
    use then, and releases it only when ``spent`` is false (see the module docstring)."""
    out = {"status": status, "cause": cause, "message": message, "scored": scored,
           "spent": bool(spent or scored), "verdict": None, "dataset_id": None,
           "samples_used": 0, "timings": {}}
    out.update(extra)
    return out


def evaluate_pr(repo: str | os.PathLike[str], *, head: str, base: str,
                key: str | os.PathLike[str], passphrase: str | None,
                runner: ModelRunner | str, cache_dir: str | os.PathLike[str],
                limits: Limits | None = None,
                echo: Callable[[str], None] = lambda s: None,
                progress: dict[str, Any] | None = None,
                config_rev: str | None = None,
                plan: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``head`` against ``base`` and return the ``result.json`` document.

    ``.easeml.yml`` and the test set come from ``config_rev`` (the default branch's
    accepted commit; default ``base``), the old model ``o`` from ``base``.

    ``plan``: the sample-size plan (``SampleSize.to_dict()``, or its JSON) the master made
    for this configuration; used only if it is for exactly this configuration (else an
    ``infra_error``, nothing looked at). Without it the plan is made here, which imports
    SciPy's statistics (about a second per evaluation).

    ``echo`` receives the developer-visible build log (image build output, progress, a
    failed run's short stderr tail where the adaptivity allows); it never receives the
    model's stdout, labels, estimates or the verdict. ``progress["spent"]`` becomes true
    the moment a model has seen the features (for a caller that must write a result
    after an unexpected error or a signal).
    """
    progress = {} if progress is None else progress
    progress.setdefault("spent", False)
    from easeml_buildbot.custody.dataset import (DatasetError, DatasetKeyError, DatasetTooSmall,
                                                 decrypted_dataset)
    from easeml_buildbot.estimator.decision import DecisionError, EmptyIntervalError, decide

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    repo_p = Path(repo).resolve()
    try:
        head_sha, base_sha = resolve(repo_p, head), resolve(repo_p, base)
        config_sha = resolve(repo_p, config_rev) if config_rev else base_sha
    except GitError as exc:
        return _result("infra_error", cause="git", message=str(exc))
    ids = {"head": head_sha, "base": base_sha, "config_rev": config_sha}
    cfg, err = load_base_config(repo_p, config_sha)
    if cfg is None:
        return _result("config_error", cause="config", message=err or "", **ids)
    if plan is not None:  # made by the master for this configuration: checked, not redone
        from easeml_buildbot.estimator.samples import SampleSize, SampleSizeError, plan_mismatch

        try:
            given = SampleSize.from_dict(json.loads(plan) if isinstance(plan, str) else plan)
            why = plan_mismatch(given, cfg.condition, cfg.reliability, cfg.adaptivity, cfg.steps,
                                cfg.method, cfg.labelling)
        except (SampleSizeError, ValueError, TypeError, AttributeError) as exc:
            why = f"unreadable: {exc}"
        if why is not None:
            return _result("infra_error", cause="plan", message=f"the master's sample-size plan "
                           f"does not fit {cfg.source}: {why}", **ids)
        plan, plan_by = given, "master"
    else:
        try:
            plan, plan_by = cfg.required_samples(), "worker"
        except ValueError as exc:
            return _result("config_error", cause="config", message=f"{cfg.source}: {exc}", **ids)
    model = dict(cfg.model or {})
    try:
        limits = (limits or Limits.from_env()).lowered_by(model)
    except ModelError as exc:
        return _result("config_error", cause=exc.cause, message=exc.message, **ids)
    try:
        runner_obj = make_runner(runner) if isinstance(runner, str) else runner
    except RunnerUnavailable as exc:
        return _result("infra_error", cause="runner_unavailable", message=str(exc), **ids)
    runner_name = getattr(runner_obj, "name", type(runner_obj).__name__)
    need_old = bool(cfg.condition.variables & {"o", "d"})
    cache = PredictionCache(Path(cache_dir))
    rows = int(plan.rows)
    from easeml_buildbot.custody.gpghome import private_tmpdir
    from easeml_buildbot.custody.policy import developer_may_see

    work = private_tmpdir("eval")
    base_info = dict(runner=runner_name, limits=limits.to_dict(), plan_by=plan_by, **ids)
    logs: dict[str, str] = {}
    show_tail = developer_may_see(cfg.adaptivity, "fail")
    try:
        blob = show(repo_p, config_sha, cfg.dataset)
        if blob is None:
            return _result("dataset_error", cause="missing_dataset",
                           message=f"{config_sha[:12]}:{cfg.dataset}: no encrypted test set on the default branch",
                           **base_info)
        base_info["dataset_id"] = hashlib.sha256(blob).hexdigest()
        enc = work / PurePosixPath(cfg.dataset).name
        enc.write_bytes(blob)
        t0 = time.perf_counter()
        try:
            with decrypted_dataset(enc, key, passphrase, label_column=cfg.split_column, rows=rows) as ds:
                timings["decrypt"] = time.perf_counter() - t0
                owners_labels = ids = None
                if cfg.labels:  # labels on demand: ds.labels are the row ids (runner/on_demand.py)
                    from easeml_buildbot.custody import labels as lab
                    from easeml_buildbot.runner import on_demand

                    ids = lab.normalize_ids(ds.labels)
                    lab.check_unique(ids, f"{config_sha[:12]}:{cfg.dataset}", ds.source_rows)
                    owners_labels = on_demand.load_labels(show, repo_p, config_sha, cfg, key, passphrase, work)
                echo(f"test set {ds.dataset_id[:12]}: {ds.n_rows} rows ({ds.format}); "
                     f"condition needs {rows}; runner {runner_name}")
                cached: dict[str, bool] = {}
                preds: dict[str, np.ndarray] = {}
                for role, sha in (("head", head_sha), ("base", base_sha)):
                    if role == "base" and not need_old:
                        continue
                    try:
                        preds[role], cached[role] = _predictions(
                            role, sha, repo_p, work, ds, model, limits, runner_obj, cache,
                            exclude=[cfg.dataset], timings=timings, echo=echo,
                            progress=progress, logs=logs)
                        if not cfg.labels:
                            preds[role] = align_to_labels(preds[role], ds.labels, who=f"{role} model")
                    except ModelError as exc:
                        who = "the pull request's model" if role == "head" else "the base commit's model"
                        tail = stderr_tail(exc.stderr, limits.stderr_lines, limits.stderr_bytes)
                        if tail and show_tail and exc.spent:
                            echo(f"{role} model: the last lines of its stderr (at most "
                                 f"{limits.stderr_lines} lines, {limits.stderr_bytes} bytes):\n{tail}")
                        return _result("model_error", cause=exc.cause, message=f"{who}: {exc.message}",
                                       spent=progress["spent"], logs=logs,
                                       timings=_rounded(timings, t_start), failed=role, **base_info)
                t0 = time.perf_counter()
                try:
                    if cfg.labels:
                        kind, extra = on_demand.score(cfg, plan, ids, preds["head"], preds["base"],
                                                      owners_labels, decide=decide)
                        progress["spent"] = True
                        if kind == "labels_needed":  # a spent use that waits for the owners' labels
                            echo("scored; the result goes to the master (not printed here)")
                            return _result("labels_needed", cause="labels_needed", spent=True,
                                           samples_used=int(ds.n_rows), logs=logs,
                                           timings=_rounded(timings, t_start), cached=cached,
                                           **extra, **base_info)
                        verdict = None
                    else:
                        verdict = decide(cfg.condition, ds.labels, preds["head"], preds.get("base"),
                                         reliability=cfg.reliability, adaptivity=cfg.adaptivity,
                                         steps=cfg.steps, mode=cfg.mode, method=cfg.method, plan=plan)
                except ModelError as exc:  # labels on demand: predictions of another type than the labels
                    return _result("model_error", cause=exc.cause, message=exc.message,
                                   spent=progress["spent"], logs=logs,
                                   timings=_rounded(timings, t_start), **base_info)
                except EmptyIntervalError as exc:  # a bug or a failed bound: never a verdict
                    return _result("infra_error", cause="estimator", message=str(exc),
                                   timings=_rounded(timings, t_start), **base_info)
                except DecisionError as exc:
                    return _result("model_error", cause="wrong_count", message=str(exc),
                                   spent=progress["spent"], logs=logs,
                                   timings=_rounded(timings, t_start), **base_info)
                timings["score"] = time.perf_counter() - t0
                progress["spent"] = True
                echo("scored; the result goes to the master (not printed here)")
                scored = extra if cfg.labels else {"verdict": verdict.to_dict()}
                return _result("scored", message="scored", scored=True, **scored,
                               samples_used=int(ds.n_rows), logs=logs,
                               timings=_rounded(timings, t_start), cached=cached, **base_info)
        except DatasetError as exc:
            # name the file as the repository knows it, not the private temporary copy
            msg = str(exc).replace(str(enc), f"{config_sha[:12]}:{cfg.dataset}")
            # the kind of problem is a field, never read back out of the message: too few rows
            # (the owners encrypt a larger set), a key problem (service key or recipient), or a
            # set that cannot be read as a test set (format, label column, damage)
            extra: dict[str, Any] = {}
            if isinstance(exc, DatasetTooSmall):
                cause = "dataset_too_small"
                extra = {"samples_needed": exc.needed, "samples_available": exc.have}
            else:
                cause = "key" if isinstance(exc, DatasetKeyError) else "dataset"
            return _result("dataset_error", cause=cause, message=msg, spent=progress["spent"],
                           logs=logs, timings=_rounded(timings, t_start), **extra, **base_info)
    except RunnerUnavailable as exc:
        return _result("infra_error", cause="runner_unavailable", message=str(exc),
                       spent=progress["spent"], logs=logs,
                       timings=_rounded(timings, t_start), **base_info)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_part(obj: Any) -> str:
    """What of a runner's log a developer may read: the image build only (a runner without
    a build, or one that does not say which part is which, shows nothing)."""
    text = getattr(obj, "build_log", "") or ""
    return f"--- build ---\n{text}" if text else ""


def _rounded(timings: Mapping[str, float], t_start: float) -> dict[str, float]:
    out = {k: round(v, 4) for k, v in timings.items()}
    out["total"] = round(time.perf_counter() - t_start, 4)
    return out


def _predictions(role: str, sha: str, repo: Path, work: Path, ds: Any, model: Mapping[str, Any],
                 limits: Limits, runner: ModelRunner, cache: PredictionCache, *, exclude: list[str],
                 timings: dict[str, float], echo: Callable[[str], None],
                 progress: dict[str, Any], logs: dict[str, str]) -> tuple[np.ndarray, bool]:
    hit = cache.get(sha, ds.dataset_id, model, ds.n_rows)
    if hit is not None:
        echo(f"{role} model {sha[:12]}: predictions cached for this test set")
        return hit, True
    t0 = time.perf_counter()
    checkout = export_commit(repo, sha, work / f"src-{role}")
    timings[f"checkout_{role}"] = time.perf_counter() - t0
    echo(f"{role} model {sha[:12]}: building and running ({getattr(runner, 'name', 'runner')})")
    try:
        res = runner.predict(checkout, ds.features_path, tag=f"{role}-{sha[:12]}", model=model,
                             limits=limits, exclude=exclude, n_rows=ds.n_rows)
    except ModelError as exc:
        progress["spent"] = progress["spent"] or bool(exc.spent)
        for k, v in exc.timings.items():
            timings[f"{k}_{role}"] = v
        logs[role] = exc.log
        if exc.build_log:
            echo(_build_part(exc))
        raise
    except RunnerUnavailable as exc:
        progress["spent"] = progress["spent"] or bool(getattr(exc, "spent", False))
        raise
    except BaseException:
        progress["spent"] = True  # the runner failed in an unknown state: count the look
        raise
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
    progress["spent"] = True
    for k, v in res.timings.items():
        timings[f"{k}_{role}"] = v
    logs[role] = res.log
    if res.build_log:
        echo(_build_part(res))
    if not cache.put(sha, ds.dataset_id, model, res.predictions):
        echo(f"warning: cannot write the predictions cache in {cache.root}")
    return res.predictions, False
