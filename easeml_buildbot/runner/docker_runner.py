"""The sandbox: build the model's image from the checkout of the exact commit under test
and run it with no network, a read-only root filesystem and hard limits.

The build context is a tar made here from the checkout, minus ``.git``, encrypted files
(``*.gpg``/``*.pgp``) and anything the caller excludes (the dataset path), plus the
repository's own ``.dockerignore``; the decrypted test set lives outside the checkout, so
the build can never see it. The run gets exactly two mounts: the features (read-only) and
an empty output directory. Labels and keys stay in the worker process.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig, Mount, Ulimit
from docker.utils.build import tar as build_tar

from easeml_buildbot.gpus import device_requests

from easeml_buildbot.runner.base import (
    BoundedLog, Limits, ModelError, RunnerUnavailable, RunResult, model_path,
)
from easeml_buildbot.runner.predictions import find_predictions, parse_predictions
from easeml_buildbot.runner.workspace import CONTAINER_INPUT_DIR, CONTAINER_OUTPUT_DIR, Workspace

log = logging.getLogger(__name__)

ALWAYS_EXCLUDED = (".git", "**/.git", "*.gpg", "**/*.gpg", "*.pgp", "**/*.pgp")
LABEL = "easeml.runner"
TAG_LABEL = "easeml.tag"
DEADLINE_LABEL = "easeml.deadline"  # unix time after which the container may be reaped
_RUNNING_IN = re.compile(r"Running in ([0-9a-f]{12,64})")
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})\s*$")
_SIGNALS = {137: "SIGKILL", 139: "SIGSEGV", 134: "SIGABRT", 143: "SIGTERM", 153: "SIGXFSZ",
            126: "command not executable", 127: "command not found"}


def _tag_for(tag: str) -> str:
    """A unique, valid image reference per build: easeml-model/<tag>:<random>."""
    name = re.sub(r"[^a-z0-9._-]+", "-", tag.lower()).strip("-._")[:100] or "model"
    return f"easeml-model/{name}:{uuid.uuid4().hex[:12]}"


def _dockerignore(context: Path) -> list[str]:
    f = context / ".dockerignore"
    if not f.is_file():
        return []
    lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _is_root_user(user: str | None) -> bool:
    name = (user or "").split(":")[0].strip()
    return name in ("", "0", "root")


class DockerRunner:
    """Runs the model of a checkout in a locked-down container (see module docstring)."""

    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None, *,
                 build_network: str | None = None, keep_images: bool = False) -> None:
        try:
            self.client = client or docker.from_env(timeout=120)
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RunnerUnavailable(f"no Docker daemon answers: {exc}") from None
        # The build never sees the test set, but offline builds are reproducible and cannot
        # fetch surprises; EASEML_BUILD_NETWORK=default lets RUN steps reach the network.
        self.build_network = build_network or os.environ.get("EASEML_BUILD_NETWORK", "none")
        self.keep_images = keep_images

    # ------------------------------------------------------------------ build
    def build(self, repo_dir: Path, *, tag: str, model: Mapping[str, Any], limits: Limits,
              exclude: Sequence[str] = (), log_out: BoundedLog) -> tuple[str, list[str]]:
        """Build the image; returns (image reference, intermediate image ids)."""
        context = model_path(repo_dir, str(model.get("context") or "."), "context")
        dockerfile = model_path(repo_dir, str(model.get("dockerfile") or "Dockerfile"), "dockerfile")
        if not dockerfile.is_file():
            raise ModelError("dockerfile_missing",
                             f"no Dockerfile at {dockerfile.relative_to(Path(repo_dir).resolve())} "
                             "(set model.dockerfile in .easeml.yml)")
        if context not in dockerfile.parents:
            raise ModelError("bad_model_config", "model.dockerfile must be inside model.context")
        rel_dockerfile = str(dockerfile.relative_to(context))
        self._check_base_images(dockerfile)
        patterns = _dockerignore(context) + list(ALWAYS_EXCLUDED) + [
            p for e in exclude for p in (e, f"{e.rstrip('/')}/**")]
        ctx = build_tar(str(context), exclude=patterns, dockerfile=(rel_dockerfile, None))
        ref = _tag_for(tag)
        steps: list[str] = []
        state: dict[str, Any] = {"running": None, "error": None, "done": False}

        def consume() -> None:
            try:
                stream = self.client.api.build(
                    fileobj=ctx, custom_context=True, tag=ref, dockerfile=rel_dockerfile,
                    # nocache: a build's intermediate images are its own. With the cache, two
                    # builds of the same Dockerfile prefix share layers, and the first one's
                    # clean-up (which prunes its layers) pulls them from under the other.
                    rm=True, forcerm=True, pull=False, nocache=True, decode=True,
                    network_mode=self.build_network, labels={LABEL: "model", TAG_LABEL: tag[:200]},
                )
                for chunk in stream:
                    text = chunk.get("stream") or chunk.get("status") or ""
                    if text:
                        log_out.write(text)
                        m = _RUNNING_IN.search(text)
                        if m:
                            state["running"] = m.group(1)
                        if text.startswith("Step "):
                            state["from"] = " : FROM " in text.upper()
                        m = _STEP_IMAGE.match(text)
                        if m and not state.get("from"):  # never the base image itself
                            steps.append(m.group(1))
                    if "error" in chunk:
                        state["error"] = str(chunk.get("error") or "").strip()
                        log_out.write(state["error"] + "\n")
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                state["error"] = state["error"] or f"docker: {exc}"
            finally:
                state["done"] = True
                ctx.close()

        worker = threading.Thread(target=consume, name=f"easeml-build-{ref}", daemon=True)
        worker.start()
        worker.join(limits.build_timeout)
        if worker.is_alive():
            # Stop the step that is running; the daemon then fails the build and removes it.
            if state["running"]:
                try:
                    self.client.api.kill(state["running"])
                except docker.errors.DockerException:
                    pass
            worker.join(30)
            self._remove_images([ref, *steps])
            raise ModelError("build_timeout", f"the image build ran longer than "
                             f"{limits.build_timeout:g}s and was stopped", log=log_out.getvalue())
        if state["error"]:
            self._remove_images([ref, *steps])
            raise ModelError("build_failed", state["error"], log=log_out.getvalue())
        try:
            self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            self._remove_images(steps)
            raise ModelError("build_failed", "the build ended without an image",
                             log=log_out.getvalue()) from None
        return ref, steps

    def _check_base_images(self, dockerfile: Path) -> None:
        """Fail fast, with a useful message, when a FROM image is not on this worker: no
        registry is reachable, and the daemon would otherwise try to pull it."""
        stages: set[str] = set()
        for line in dockerfile.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[0].upper() != "FROM":
                continue
            args = [a for a in parts[1:] if not a.startswith("--")]
            if not args:
                continue
            image = args[0]
            if len(args) >= 3 and args[1].upper() == "AS":
                stages.add(args[2].lower())
            if "$" in image or image.lower() in stages or image == "scratch":
                continue
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                have = sorted({t for i in self.client.images.list() for t in i.tags
                               if not t.startswith("easeml-model/")})[:10]
                raise ModelError("build_failed", f"base image {image!r} is not on this worker "
                                 f"(no registry is reachable; available: {', '.join(have) or 'none'})"
                                 ) from None
            except docker.errors.APIError:
                continue

    # -------------------------------------------------------------------- run
    def _host_cpus(self) -> float:
        """The daemon refuses more CPUs than its host has; a limit above that means all."""
        if not hasattr(self, "_ncpu"):
            try:
                self._ncpu = float(self.client.info().get("NCPU") or 1)
            except docker.errors.DockerException:
                self._ncpu = float(os.cpu_count() or 1)
        return self._ncpu

    def _user_for(self, image: str, limits: Limits) -> str:
        try:
            user = self.client.images.get(image).attrs.get("Config", {}).get("User") or ""
        except docker.errors.DockerException:
            user = ""
        return limits.user if _is_root_user(user) else user

    def run(self, image: str, ws: Workspace, *, limits: Limits, log_out: BoundedLog,
            tag: str = "") -> int:
        """Run the image once; returns its exit code (raises timeout/oom)."""
        ext = ws.features.suffix
        features_in = f"{CONTAINER_INPUT_DIR}/features{ext}"
        container = self.client.containers.create(
            image,
            user=self._user_for(image, limits),
            environment={
                "EASEML_FEATURES": features_in,
                "EASEML_OUTPUT": CONTAINER_OUTPUT_DIR,
                "EASEML_ROWS": str(ws.n_rows),
                "HOME": "/tmp", "TMPDIR": "/tmp",
            },
            mounts=[
                Mount(features_in, str(ws.features), type="bind", read_only=True),
                Mount(CONTAINER_OUTPUT_DIR, str(ws.output), type="bind", read_only=False),
            ],
            network_mode="none",
            network_disabled=True,
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={limits.tmpfs}"},
            mem_limit=limits.memory,
            memswap_limit=limits.memory,
            nano_cpus=int(min(limits.cpus, self._host_cpus()) * 1e9),
            pids_limit=limits.pids,
            device_requests=device_requests(limits.gpus) or None,  # model.gpus (docs/operator-guide.md)
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ipc_mode="private",
            init=True,
            ulimits=[Ulimit(name="fsize", soft=limits.output, hard=limits.output),
                     Ulimit(name="core", soft=0, hard=0),
                     Ulimit(name="nofile", soft=1024, hard=1024)],
            log_config=LogConfig(type="json-file",
                                 config={"max-size": str(max(1 << 20, 4 * limits.log_bytes)),
                                         "max-file": "2"}),
            labels={LABEL: "model", TAG_LABEL: tag[:200],
                    DEADLINE_LABEL: str(int(time.time() + limits.timeout + 120))},
            detach=True,
        )
        try:
            # Attach before starting: the output arrives live from the container's stdio (the
            # daemon's size-capped log file may rotate), and BoundedLog keeps memory bounded.
            stream = container.attach(stdout=True, stderr=True, stream=True, logs=True)
            follower = threading.Thread(target=self._follow, args=(stream, log_out), daemon=True)
            follower.start()
            try:
                container.start()
            except docker.errors.APIError as exc:  # the image's command cannot start
                detail = exc.explanation or str(exc)
                raise ModelError("crash", f"the model's container did not start: {detail}") from None
            timed_out = False
            try:
                status = container.wait(timeout=limits.timeout)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                timed_out = True
                try:
                    container.kill()
                except docker.errors.DockerException:
                    pass
                status = container.wait(timeout=60)
            follower.join(10)
            container.reload()
            state = container.attrs.get("State", {})
            if timed_out:
                raise ModelError("timeout", f"the model ran longer than {limits.timeout:g}s and "
                                 "was killed")
            if state.get("OOMKilled"):
                raise ModelError("oom", f"the model used more than {limits.memory >> 20} MiB of "
                                 "memory and was killed")
            return int(status.get("StatusCode", state.get("ExitCode", -1)))
        finally:
            try:
                container.remove(force=True)
            except docker.errors.DockerException as exc:  # pragma: no cover - daemon trouble
                log.warning("could not remove container %s: %s", container.id[:12], exc)

    def reap_stale(self, now: float | None = None) -> list[str]:
        """Remove model containers past their deadline. A worker killed with SIGKILL
        (Buildbot's default on interrupt) cannot clean up its container; the next run on
        the same daemon does, so a sleeping model cannot outlive its limit by much."""
        now = time.time() if now is None else now
        removed = []
        try:
            stale = self.client.containers.list(all=True, filters={"label": f"{LABEL}=model"})
        except docker.errors.DockerException:
            return removed
        for c in stale:
            try:
                deadline = float(c.labels.get(DEADLINE_LABEL, "inf"))
            except ValueError:
                continue
            if deadline < now:
                try:
                    c.remove(force=True)
                    removed.append(c.id)
                except docker.errors.DockerException:
                    pass
        if removed:
            log.warning("removed %d model container(s) left past their deadline", len(removed))
        return removed

    @staticmethod
    def _follow(stream: Any, log_out: BoundedLog) -> None:
        try:
            for chunk in stream:
                log_out.write(chunk.decode("utf-8", errors="replace"))
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            pass

    def _remove_images(self, refs: Iterable[str]) -> None:
        """Remove our image (by its unique tag) and untagged leftovers of a failed build;
        an image that carries any other tag (a base image) is never touched."""
        if self.keep_images:
            return
        for ref in refs:
            try:
                img = self.client.images.get(ref)
                if ref.startswith("easeml-model/"):
                    if any(not t.startswith("easeml-model/") for t in img.tags):
                        continue
                    self.client.images.remove(ref, noprune=False)
                elif not img.tags:
                    self.client.images.remove(img.id, noprune=False)
            except docker.errors.DockerException:
                pass

    # ---------------------------------------------------------------- predict
    def predict(self, repo_dir: str | os.PathLike[str], features_path: str | os.PathLike[str], *,
                tag: str, model: Mapping[str, Any] | None = None, limits: Limits | None = None,
                exclude: Sequence[str] = (), n_rows: int | None = None) -> RunResult:
        """Build the checkout's image, run it on the features, return its predictions
        (``n_rows``: the features' row count when the caller knows it)."""
        model = dict(model or {})
        limits = (limits or Limits.from_env()).lowered_by(model)
        repo = Path(repo_dir).resolve()
        timings: dict[str, float] = {}
        build_log, run_log = BoundedLog(limits.log_bytes), BoundedLog(limits.log_bytes)

        def full_log() -> str:
            return f"--- build ---\n{build_log.getvalue()}\n--- run ---\n{run_log.getvalue()}"

        image: str | None = None
        steps: list[str] = []
        ws: Workspace | None = None
        self.reap_stale()
        try:
            t0 = time.perf_counter()
            try:
                image, steps = self.build(repo, tag=tag, model=model, limits=limits,
                                          exclude=exclude, log_out=build_log)
            finally:
                timings["build"] = time.perf_counter() - t0
            ws = Workspace.create(features_path, prefix="easeml-run-", n_rows=n_rows)
            t0 = time.perf_counter()
            try:
                code = self.run(image, ws, limits=limits, log_out=run_log, tag=tag)
            finally:
                timings["run"] = time.perf_counter() - t0
            # SIGXFSZ kills a writer past the file-size limit; Python ignores the signal and
            # gets EFBIG ("File too large") instead.
            if code == 153 or (code != 0 and "File too large" in run_log.getvalue()):
                raise ModelError("output_too_large", "the model wrote a file larger than "
                                 f"{limits.output >> 20} MiB")
            if code != 0:
                sig = f" ({_SIGNALS[code]})" if code in _SIGNALS else ""
                raise ModelError("crash", f"the model exited with code {code}{sig}; see the run log")
            t0 = time.perf_counter()
            ws.check_output_size(limits.output)
            preds = parse_predictions(find_predictions(ws.output), ws.n_rows)
            timings["parse"] = time.perf_counter() - t0
            return RunResult(predictions=preds, log=full_log(), timings=timings)
        except ModelError as exc:
            exc.log = full_log()
            exc.timings = {**timings, **exc.timings}
            raise
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise RunnerUnavailable(f"docker: {exc}") from None
        finally:
            if ws is not None:
                ws.remove()
            if image is not None:
                self._remove_images([image])
