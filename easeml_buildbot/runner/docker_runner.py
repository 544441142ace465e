"""The sandbox: build the model's image from the checkout of the exact commit under test
and run it with no network, a read-only root filesystem and hard limits.

The build context is a tar made here from the checkout, minus ``.git``, encrypted files
(``*.gpg``/``*.pgp``) and anything the caller excludes (the dataset path), plus the
repository's own ``.dockerignore``; the decrypted test set lives outside the checkout, so
the build can never see it. The run gets exactly two mounts: the features (read-only) and
an empty output directory, a tmpfs volume of exactly the output limit that a tiny keeper
container (``easeml/busybox``) holds mounted so it can be read back after the model exits.
The model runs as a numeric non-root ``uid:gid`` (the image's ``USER`` resolved in its own
``/etc/passwd``). Labels and keys stay in the worker process. stdout and stderr are kept
apart: what a developer may see of them is decided in ``runner/evaluate.py``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig, Mount, Ulimit
from docker.utils.build import tar as build_tar

from easeml_buildbot.gpus import device_requests

from easeml_buildbot.runner.base import (
    BoundedLog, Limits, ModelError, RunnerUnavailable, RunResult, model_path, numeric_user,
)
from easeml_buildbot.runner.build_cgroup import BuildCgroup, CgroupUnavailable
from easeml_buildbot.runner.dockerfile import (
    Dockerfile, DockerfileError, check_sandbox, sandbox_problems,
)
from easeml_buildbot.runner.egress import EgressError, EgressSettings, build_route
from easeml_buildbot.runner.image_cache import ImageCache, Lease, context_digest
from easeml_buildbot.runner.images import (
    DEFAULT_DOMAIN, AllowedImages, BadReference, Reference, normalize, parse_reference,
)
from easeml_buildbot.runner.predictions import find_predictions, parse_predictions
from easeml_buildbot.runner.workspace import CONTAINER_INPUT_DIR, CONTAINER_OUTPUT_DIR, Workspace

log = logging.getLogger(__name__)

ALWAYS_EXCLUDED = (".git", "**/.git", "*.gpg", "**/*.gpg", "*.pgp", "**/*.pgp")
LABEL = "easeml.runner"
TAG_LABEL = "easeml.tag"
DEADLINE_LABEL = "easeml.deadline"  # unix time after which the container may be reaped
OWNER_LABEL = "easeml.owner"  # host:pid of the evaluating process (reaped when it dies)
HELPER_IMAGE = "easeml/busybox:latest"  # keeps the output tmpfs mounted (EASEML_HELPER_IMAGE)
KEEPER_DIR = "/out"
OUTPUT_INODES = 16384  # files + directories the model may create in /easeml/output
OUTPUT_SLACK = 64 << 10  # a tmpfs this close to full counts as full (page rounding)
_RUNNING_IN = re.compile(r"Running in ([0-9a-f]{12,64})")
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})\s*$")
_SIGNALS = {137: "SIGKILL", 139: "SIGSEGV", 134: "SIGABRT", 143: "SIGTERM", 153: "SIGXFSZ",
            126: "command not executable", 127: "command not found"}


_MAX_DOCKERFILE = 1 << 20  # bytes of a Dockerfile read (the daemon's own limit is larger)


def _dockerignore(context: Path) -> list[str]:
    f = context / ".dockerignore"
    if not f.is_file():
        return []
    lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def owner_label() -> str:
    """``host:pid`` of this process, on every container and volume of a run: what the
    evaluation's watchdog removes when this process dies without cleaning up."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _passwd_entries(text: bytes) -> list[list[str]]:
    rows = []
    for line in text.decode("utf-8", errors="replace").splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def resolve_user(name: str, group: str, passwd: bytes, groups: bytes) -> tuple[int | None, int | None]:
    """``USER name[:group]`` of an image -> numeric (uid, gid) as the image's /etc/passwd and
    /etc/group define them (numbers stand for themselves, ``00`` is 0); None where a name is
    not found. No group: the user's primary group, else the uid's number (Docker's rule)."""
    uid: int | None = None
    gid: int | None = None
    if name.isdigit():
        uid = int(name)
        for row in _passwd_entries(passwd):
            if len(row) >= 4 and row[2].isdigit() and int(row[2]) == uid and row[3].isdigit():
                gid = int(row[3])
                break
        else:
            gid = uid if not group else None
    else:
        for row in _passwd_entries(passwd):
            if len(row) >= 4 and row[0] == name and row[2].isdigit():
                uid = int(row[2])
                gid = int(row[3]) if row[3].isdigit() else None
                break
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gid = next((int(r[2]) for r in _passwd_entries(groups)
                        if len(r) >= 3 and r[0] == group and r[2].isdigit()), None)
    return uid, gid


class _Named:
    """A container by name that may not exist yet: ``remove`` works either way."""

    def __init__(self, client: docker.DockerClient, name: str) -> None:
        self.client, self.name, self.id = client, name, name

    def remove(self, force: bool = True) -> None:
        self.client.api.remove_container(self.name, force=force)


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (``get_archive``'s stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class DockerRunner:
    """Runs the model of a checkout in a locked-down container (see module docstring)."""

    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None, *,
                 build_network: str | None = None, keep_images: bool = False,
                 build_args: Mapping[str, str] | None = None,
                 allowed_images: AllowedImages | None = None,
                 image_cache: ImageCache | None = None,
                 build_cgroup: bool | None = None) -> None:
        try:
            self.client = client or docker.from_env(timeout=120)
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RunnerUnavailable(f"no Docker daemon answers: {exc}") from None
        # The build never sees the test set, but offline builds are reproducible and cannot
        # fetch surprises; EASEML_BUILD_EGRESS=proxy routes RUN steps through the operator's
        # allow-listing proxy on an internal network (runner/egress.py).
        try:
            self.egress = EgressSettings.from_env()
            if build_network:
                self.egress = dataclasses.replace(self.egress, network=build_network)
        except EgressError as exc:
            raise RunnerUnavailable(str(exc)) from None
        self.build_network = self.egress.network
        self.keep_images = keep_images
        # Build arguments come from the operator only (e.g. an egress proxy), never from the
        # repository or the worker's environment.
        self.build_args = dict(build_args or {})
        self.allowed_images = allowed_images or AllowedImages.from_env()
        self.cache = image_cache or ImageCache(self.client)
        if build_cgroup is None:
            build_cgroup = os.environ.get("EASEML_BUILD_CGROUP", "on").strip().lower() not in (
                "off", "0", "false", "no")
        self.build_cgroup = build_cgroup
        self._leases: dict[str, list[Lease]] = {}
        self._leases_lock = threading.Lock()
        self.helper_image = os.environ.get("EASEML_HELPER_IMAGE", "").strip() or HELPER_IMAGE

    # ------------------------------------------------------------------ build
    def build(self, repo_dir: Path, *, tag: str, model: Mapping[str, Any], limits: Limits,
              exclude: Sequence[str] = (), log_out: BoundedLog) -> tuple[str, list[str]]:
        """Build the image (or find it in the cache); returns (image reference, ids of the
        step images this build made). The image is held (no prune removes it) until
        :meth:`_remove_images` releases it."""
        repo = Path(repo_dir).resolve()
        context = model_path(repo, str(model.get("context") or "."), "context")
        dockerfile = model_path(repo, str(model.get("dockerfile") or "Dockerfile"), "dockerfile")
        if not dockerfile.is_file():
            raise ModelError("dockerfile_missing",
                             f"no Dockerfile at {dockerfile.relative_to(repo)} "
                             "(set model.dockerfile in .easeml.yml)")
        if context not in dockerfile.parents:
            raise ModelError("bad_model_config", "model.dockerfile must be inside model.context")
        rel_dockerfile = str(dockerfile.relative_to(context))
        data = dockerfile.read_bytes()
        if len(data) > _MAX_DOCKERFILE:
            # the daemon reads the whole file: checking a prefix would let the rest through
            raise ModelError("build_failed", f"{dockerfile.relative_to(repo)}: the Dockerfile "
                             f"has {len(data)} bytes, more than the {_MAX_DOCKERFILE} checked")
        # surrogateescape: a byte that is not UTF-8 stays that byte for the parser (the
        # daemon reads bytes; a lone 0xA0 ends a flag word there)
        text = data.decode("utf-8", errors="surrogateescape")
        try:
            parsed = check_sandbox(text, path=str(dockerfile.relative_to(repo)))
        except DockerfileError as exc:
            raise ModelError("build_failed", str(exc)) from None
        route = build_route(self.client, self.egress)  # the operator's network for RUN steps
        lease = self.cache.lease()  # from here on no prune removes what this build uses
        try:
            bases = self._check_base_images(parsed, log_out)
            patterns = _dockerignore(context) + list(ALWAYS_EXCLUDED) + [
                p for e in exclude for p in (e, f"{e.rstrip('/')}/**")]
            ctx = build_tar(str(context), exclude=patterns, dockerfile=(rel_dockerfile, None))
            settings = {"network": route.network_mode,
                        "build_args": {**self.build_args, **route.buildargs}}
            ref = self.cache.ref_for(self.cache.key(context_digest(ctx), rel_dockerfile,
                                                    settings, bases))
            if self.cache.lookup(ref):
                ctx.close()
                log_out.write(f"using the cached image {ref} (same build context, Dockerfile, "
                              "base images and build settings)\n")
                steps: list[str] = []
            else:
                steps = self._build(ctx, ref, rel_dockerfile, limits, log_out, settings)
                self.cache.touch(ref)
        except BaseException:
            lease.release()
            raise
        with self._leases_lock:
            self._leases.setdefault(ref, []).append(lease)
        return ref, steps

    def _build(self, ctx: Any, ref: str, rel_dockerfile: str, limits: Limits,
               log_out: BoundedLog, settings: Mapping[str, Any]) -> list[str]:
        steps: list[str] = []
        state: dict[str, Any] = {"running": None, "error": None, "limit": None, "done": False}
        cgroup = BuildCgroup(pids=limits.pids, cpus=min(limits.cpus, self._host_cpus()),
                             memory=limits.memory)
        if self.build_cgroup:
            driver = self._cgroup_driver()
            if driver != "cgroupfs":
                ctx.close()
                raise RunnerUnavailable(
                    f"the Docker daemon uses the {driver!r} cgroup driver; the build's pid and "
                    "CPU limits need 'cgroupfs' (dockerd --exec-opt native.cgroupdriver=cgroupfs), "
                    "or set EASEML_BUILD_CGROUP=off to build without them")
            try:
                cgroup.create()
            except CgroupUnavailable as exc:
                ctx.close()
                raise RunnerUnavailable(f"{exc}; the build's pid and CPU limits need it "
                                        "(EASEML_BUILD_CGROUP=off builds without them)") from None

        def consume() -> None:
            try:
                stream = self._post_build(ctx, {
                    "t": ref, "dockerfile": rel_dockerfile,
                    # The layer cache is on: nothing removes an image while a build holds
                    # the cache (see image_cache.py). rm/forcerm remove step *containers*.
                    "rm": True, "forcerm": True, "pull": False, "nocache": False,
                    "networkmode": settings["network"],
                    "labels": json.dumps({LABEL: "model"}),
                    # only the operator's build arguments; the SDK would add the worker's
                    # proxy settings from ~/.docker/config.json (use_config_proxy)
                    "buildargs": json.dumps(settings["build_args"]),
                    # with the build's cgroup the memory limit is its (one counter of OOM
                    # kills for the whole build); without, per step container
                    **({"cgroupparent": cgroup.parent} if self.build_cgroup else
                       {"memory": limits.memory, "memswap": limits.memory}),
                }, state)
                for chunk in stream:
                    text = chunk.get("stream") or chunk.get("status") or ""
                    if text:
                        log_out.write(text)
                        m = _RUNNING_IN.search(text)
                        if m:
                            state["running"] = m.group(1)
                            if state["limit"]:
                                self._kill(m.group(1))
                        if text.startswith("Step "):
                            state["from"] = " : FROM " in text.upper()
                            state["running"] = None
                        m = _STEP_IMAGE.match(text)
                        if m and not state.get("from"):  # never the base image itself
                            steps.append(m.group(1))
                            state["running"] = None
                            self._check_disk(state, steps, limits)
                    if "error" in chunk:
                        state["error"] = str(chunk.get("error") or "").strip()
                        log_out.write(state["error"] + "\n")
            except (docker.errors.DockerException, requests.exceptions.RequestException,
                    AttributeError, OSError, ValueError) as exc:
                # (a hang-up of ours ends the stream with whatever the closed socket raises)
                state["error"] = state["error"] or state["limit"] or f"docker: {exc}"
            finally:
                state["done"] = True
                ctx.close()

        worker = threading.Thread(target=consume, name=f"easeml-build-{ref}", daemon=True)
        watcher = threading.Thread(target=self._watch_disk, args=(state, steps, limits),
                                   name=f"easeml-build-disk-{ref}", daemon=True)
        try:
            worker.start()
            watcher.start()
            worker.join(limits.build_timeout)
            if worker.is_alive():
                # Stop the step that is running; the daemon then fails the build and removes it.
                state["limit"] = state["limit"] or "timeout"
                self._cancel(state)
                worker.join(30)
                self._drop_failed(ref, steps)
                raise ModelError("build_timeout", f"the image build ran longer than "
                                 f"{limits.build_timeout:g}s and was stopped", log=log_out.getvalue())
            watcher.join(5)
            why = state["limit"] if state["limit"] not in (None, "timeout") else None
            why = why or (self._cgroup_limit_hit(cgroup, limits, state["error"])
                          if state["error"] and self.build_cgroup else None)
            if why:
                self._drop_failed(ref, steps)
                log_out.write(why + "\n")
                raise ModelError("build_failed", why, log=log_out.getvalue())
            if state["error"]:
                self._drop_failed(ref, steps)
                raise ModelError("build_failed", state["error"], log=log_out.getvalue())
            try:
                self.client.images.get(ref)
            except docker.errors.ImageNotFound:
                self._drop_failed(ref, steps)
                raise ModelError("build_failed", "the build ended without an image",
                                 log=log_out.getvalue()) from None
            return steps
        finally:
            state["done"] = True
            if self.build_cgroup:
                cgroup.remove()

    def _post_build(self, ctx: Any, params: Mapping[str, Any],
                    state: dict[str, Any]) -> Iterable[dict[str, Any]]:
        """POST /build with the classic builder (``version=1``: it takes per-build
        ``cgroupparent`` and memory limits; the SDK's ``build()`` has no ``cgroup_parent``).
        No registry credentials are sent: base images are pulled before the build."""
        api = self.client.api
        response = api._post(api._url("/build"), data=ctx, params={"version": "1", **params},
                             headers={"Content-Type": "application/x-tar"}, stream=True,
                             timeout=None)
        state["response"] = response  # closing it cancels the build
        return api._stream_helper(response, decode=True)

    def _cgroup_driver(self) -> str:
        if not hasattr(self, "_driver"):
            try:
                self._driver = str(self.client.info().get("CgroupDriver") or "cgroupfs")
            except docker.errors.DockerException:
                self._driver = "cgroupfs"
        return self._driver

    def _kill(self, container_id: str) -> None:
        try:
            self.client.api.kill(container_id)
        except docker.errors.DockerException:
            pass

    def _watch_disk(self, state: dict[str, Any], steps: list[str], limits: Limits) -> None:
        """Stop the build when its layers plus the running step's writes exceed the build
        disk limit (checked about every 0.25 s during a step and as each step ends)."""
        while not state["done"] and not state["limit"]:
            t0 = time.monotonic()
            self._check_disk(state, steps, limits)
            # the daemon walks the step's upper directory for its size: keep that under ~20 %
            # of a core however many files a step writes
            time.sleep(max(0.25, 4 * (time.monotonic() - t0)))

    def _check_disk(self, state: dict[str, Any], steps: list[str], limits: Limits) -> None:
        layer = state.setdefault("layers", {})
        try:
            for sid in list(steps):
                if sid not in layer:
                    attrs = self.client.api.inspect_image(sid)
                    parent = attrs.get("Parent") or ""
                    psize = int(self.client.api.inspect_image(parent).get("Size") or 0) if parent else 0
                    layer[sid] = max(0, int(attrs.get("Size") or 0) - psize)
            used = sum(layer.values())
            running = state["running"]
            if running:
                found = self.client.api.containers(all=True, filters={"id": running}, size=True)
                used += int((found[0].get("SizeRw") if found else 0) or 0)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return
        if used > limits.build_disk and not state["limit"]:
            state["limit"] = (f"the build wrote more than {limits.build_disk >> 20} MiB "
                              f"to its image layers (the build disk limit, "
                              f"EASEML_BUILD_DISK) and was stopped")
            self._cancel(state)

    def _cancel(self, state: dict[str, Any]) -> None:
        """Stop the build: kill its running step and hang up (the daemon cancels it)."""
        if state["running"]:
            self._kill(state["running"])
        response = state.get("response")
        if response is not None:
            try:
                response.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    @staticmethod
    def _cgroup_limit_hit(cgroup: BuildCgroup, limits: Limits, error: str) -> str | None:
        """Why a failed step was stopped, from the build cgroup's counters."""
        events = cgroup.events()
        killed = "non-zero code: 137" in error
        if events.get("oom_kill") or (killed and events.get("memory_failcnt")):
            return (f"a build step used more than {limits.memory >> 20} MiB of memory and was "
                    "killed (the memory limit, EASEML_MEMORY)")
        if events.get("pids_max"):
            return (f"a build step reached the limit of {limits.pids} processes (the pids "
                    "limit, EASEML_PIDS)")
        return None

    def _drop_failed(self, ref: str, steps: list[str]) -> None:
        """A failed build's image and step images stay until the next prune (removing
        them here could pull a shared layer from under a concurrent build)."""
        try:
            ids = [self.client.images.get(ref).id]
            self.client.images.remove(ref, noprune=True)  # the tag only, never a layer
        except docker.errors.DockerException:
            ids = []
        self.cache.add_orphans([*ids, *steps])

    def _check_base_images(self, df: Dockerfile, log_out: BoundedLog) -> dict[str, str]:
        """Every image the build reads (FROM, COPY --from, RUN --mount from=) is allowed,
        and present: an image on the operator's list EASEML_ALLOWED_IMAGES is pulled (by
        digest when pinned) with the worker's own Docker credentials; any other image must
        already be on this worker. Returns {reference: image id} (part of the cache key)."""
        ids: dict[str, str] = {}
        try:
            uses = df.base_images(self.build_args)
        except DockerfileError as exc:
            raise ModelError("build_failed", str(exc)) from None
        for use in uses:
            where = f"{df.path}:{use.line}: {use.how} {use.ref}"
            try:
                parsed = parse_reference(use.ref)
            except BadReference as exc:
                raise ModelError("build_failed", f"{where}: {exc}") from None
            if parsed.name.startswith(f"{DEFAULT_DOMAIN}/easeml-model/"):
                raise ModelError("build_failed", f"{where}: the images of other models are not "
                                 "a base image")
            local = self._local_image(use.ref, parsed)
            if local is None and self.allowed_images.allows(parsed):
                repository, tag = parsed.pull_args
                log_out.write(f"pulling {parsed} (allowed by {self.allowed_images.describe()})\n")
                try:
                    # no auth_config: the SDK uses the worker's ~/.docker/config.json and its
                    # credential helpers, nothing of the repository
                    self.client.images.pull(repository, tag=tag)
                except docker.errors.APIError as exc:
                    raise ModelError("build_failed", f"{where}: pulling the image failed: "
                                     f"{exc.explanation or exc}") from None
                local = self._local_image(use.ref, parsed)
                if local is not None:
                    self.cache.touch_pulled(use.ref)
            elif local is not None and use.ref in self.cache.pulled():
                self.cache.touch_pulled(use.ref)
            if local is None:
                if self.allowed_images.allows(parsed):
                    raise ModelError("build_failed", f"{where}: the image was pulled but is not "
                                     "on this worker under that name")
                have = sorted({t for i in self.client.images.list() for t in i.tags
                               if not t.startswith("easeml-model/")})[:10]
                raise ModelError("build_failed", f"{where}: image {str(parsed)!r} is not allowed "
                                 f"on this worker ({self.allowed_images.describe()}; images on "
                                 f"this worker: {', '.join(have) or 'none'})")
            ids[str(parsed)] = local
            if use.how == "FROM":
                self._check_onbuild(local, where)
        return ids

    def _check_onbuild(self, image_id: str, where: str) -> None:
        """A base image's ONBUILD triggers run in this build as if they were in the
        Dockerfile: they obey the same rules (whoever can push to an allowed repository
        could otherwise hide ``ADD <url>`` there)."""
        try:
            config = self.client.images.get(image_id).attrs.get("Config") or {}
        except docker.errors.DockerException:
            return
        if config.get("Volumes"):
            # each build step (and the model's run) would get an anonymous volume there,
            # outside the build disk limit
            raise ModelError("build_failed", f"{where}: the base image declares VOLUME "
                             f"{', '.join(sorted(config['Volumes']))}; images with volumes are "
                             "not a base (the build disk limit does not see a volume's writes)")
        triggers = config.get("OnBuild") or []
        if not triggers:
            return
        problems = sandbox_problems("\n".join(triggers), path="ONBUILD")
        if problems:
            detail = "; ".join(f"trigger {p.line}: {p.message}" for p in problems)
            raise ModelError("build_failed", f"{where}: the base image's ONBUILD triggers would "
                             f"run in this build and are not allowed: {detail}")

    def _local_image(self, ref: str, parsed: Reference) -> str | None:
        """The id of the local image the daemon would use for ``ref`` when it is there by
        that name (never an image id prefix, which the daemon also accepts)."""
        try:
            img = self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError:
            return None
        names = {normalize(t) for t in img.attrs.get("RepoTags") or [] if "<none>" not in t}
        digests = {normalize(d) for d in img.attrs.get("RepoDigests") or [] if "<none>" not in d}
        if parsed.digest:
            return img.id if f"{parsed.name}@{parsed.digest}" in digests else None
        return img.id if str(parsed) in names else None

    # -------------------------------------------------------------------- run
    def _host_cpus(self) -> float:
        """The daemon refuses more CPUs than its host has; a limit above that means all."""
        if not hasattr(self, "_ncpu"):
            try:
                self._ncpu = float(self.client.info().get("NCPU") or 1)
            except docker.errors.DockerException:
                self._ncpu = float(os.cpu_count() or 1)
        return self._ncpu

    def _image_file(self, image: str, paths: Sequence[str], limit: int = 1 << 20) -> dict[str, bytes]:
        """Regular files of ``image`` (at most ``limit`` bytes each) read from a created,
        never started container: the image's own view, with no code of it running."""
        found: dict[str, bytes] = {}
        box = self.client.containers.create(
            image, command=["/nonexistent"], entrypoint=[], network_disabled=True,
            labels={LABEL: "probe", OWNER_LABEL: owner_label(),
                    DEADLINE_LABEL: str(int(time.time() + 300))})
        try:
            for path in paths:
                try:
                    bits, stat = box.get_archive(path)
                except docker.errors.NotFound:
                    continue
                if int(stat.get("size", 0)) > limit:
                    raise ModelError("bad_image_user", f"the image's {path} is larger than {limit} bytes")
                data = b"".join(bits)
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    member = next(iter(tar), None)
                    if member is not None and member.isfile():
                        fh = tar.extractfile(member)
                        found[path] = fh.read(limit) if fh else b""
        finally:
            try:
                box.remove(force=True)
            except docker.errors.DockerException:
                pass
        return found

    def _user_for(self, image: str, limits: Limits) -> str:
        """The numeric ``uid:gid`` the model runs as: the image's ``USER`` resolved in its own
        /etc/passwd and /etc/group, or the operator's ``limits.user`` when the image names
        none or any spelling of root (``0``, ``00``, ``root``, ``0:0``, an alias of uid 0).
        A numeric form means Docker adds no supplementary groups from the image either."""
        operator = numeric_user(limits.user)
        user = (self.client.images.get(image).attrs.get("Config", {}).get("User") or "").strip()
        if not user:
            return operator
        name, _, group = user.partition(":")
        name, group = name.strip(), group.strip()
        numeric = name.isdigit() and group.isdigit()
        files = {} if numeric else self._image_file(image, ("/etc/passwd", "/etc/group"))
        uid, gid = resolve_user(name, group, files.get("/etc/passwd", b""), files.get("/etc/group", b""))
        if uid is None:
            raise ModelError("crash", f"the model's container did not start: the image's USER "
                             f"{name!r} is not in its /etc/passwd")
        if gid is None:
            raise ModelError("crash", f"the model's container did not start: the image's USER "
                             f"group {group!r} is not in its /etc/group")
        if uid == 0:
            return operator
        if gid == 0:  # the root group owns files root does; keep the operator's group instead
            gid = int(operator.split(":")[1])
        return f"{uid}:{gid}"

    def _output_volume(self, ws: Workspace, user: str, limits: Limits, labels: dict[str, str]):
        """A tmpfs of exactly ``limits.output`` bytes for /easeml/output (a write past it
        fails with ENOSPC, however many files), held mounted by a tiny keeper container so
        its content outlives the model and can be read back."""
        uid, gid = user.split(":")
        name = f"easeml-out-{uuid.uuid4().hex[:16]}"
        volume = self.client.volumes.create(
            name=name, driver="local", labels={**labels, LABEL: "output"},
            driver_opts={"type": "tmpfs", "device": "tmpfs",
                         "o": f"size={max(4096, limits.output)},nr_inodes={OUTPUT_INODES},"
                              f"uid={uid},gid={gid},mode=0700,nosuid,nodev,noexec"})
        keeper = None
        try:
            keeper = _Named(self.client, f"{name}-keeper")  # removable even if create is cut short
            keeper = self.client.containers.create(
                self.helper_image, ["sleep", str(int(limits.timeout) + 600)], user=user,
                name=keeper.name,
                mounts=[Mount(KEEPER_DIR, name, type="volume", no_copy=True)], network_mode="none",
                network_disabled=True, read_only=True, cap_drop=["ALL"],
                security_opt=["no-new-privileges"], mem_limit=32 << 20, pids_limit=8,
                labels={**labels, LABEL: "keeper"}, detach=True)
            keeper.start()
        except docker.errors.ImageNotFound:
            self._drop(keeper, volume)
            raise RunnerUnavailable(f"the helper image {self.helper_image} is not on this worker "
                                    "(scripts/build-base-image.sh builds it)") from None
        except BaseException:
            self._drop(keeper, volume)
            raise
        return volume, keeper

    @staticmethod
    def _drop(*objs: Any) -> None:
        """Remove containers (forcibly, running or not) and volumes; absent ones are fine."""
        for obj in objs:
            if obj is None:
                continue
            try:
                obj.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as exc:  # pragma: no cover - daemon trouble
                log.warning("could not remove %s: %s", getattr(obj, "id", obj), exc)

    def _copy_output(self, keeper: Any, ws: Workspace, limit: int) -> int:
        """Copy regular files and directories of the output tmpfs into ``ws.output``;
        returns the bytes the tmpfs held (rounded up to pages, as tmpfs counts them)."""
        bits, _stat = keeper.get_archive(KEEPER_DIR + "/.")
        used = 0
        root = ws.output.resolve()
        with tarfile.open(fileobj=_ChunkReader(bits), mode="r|") as tar:
            for m in tar:
                parts = [p for p in PurePosixPath(m.name).parts if p not in (".", "", "/")]
                if parts and parts[0] == PurePosixPath(KEEPER_DIR).name:
                    parts = parts[1:]
                if not parts or any(p == ".." for p in parts):
                    continue
                target = root.joinpath(*parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    used += -(-m.size // 4096) * 4096
                    if used > limit + (1 << 20):  # cannot happen with the tmpfs; bound anyway
                        break
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    with open(target, "wb") as fh:
                        shutil.copyfileobj(src, fh, 1 << 20)
        return used

    def run(self, image: str, ws: Workspace, *, limits: Limits, log_out: BoundedLog,
            tag: str = "", err_out: BoundedLog | None = None,
            state: dict[str, Any] | None = None) -> int:
        """Run the image once; returns its exit code (raises timeout/oom/output_too_large).

        ``log_out`` gets stdout and stderr as they come, ``err_out`` stderr alone;
        ``state["started"]`` becomes true once the model's process started with the
        features (from then on the run counts as a look at them). The predictions and
        whatever else the model wrote end up in ``ws.output``."""
        state = {} if state is None else state
        state.setdefault("started", False)
        ext = ws.features.suffix
        features_in = f"{CONTAINER_INPUT_DIR}/features{ext}"
        user = self._user_for(image, limits)
        labels = {TAG_LABEL: tag[:200], OWNER_LABEL: owner_label(),
                  DEADLINE_LABEL: str(int(time.time() + limits.timeout + 120))}
        volume, keeper = self._output_volume(ws, user, limits, labels)
        # named before it exists: a signal between the daemon's create and our assignment
        # must not leave an unnamed container nobody removes
        container: Any = _Named(self.client, f"{volume.name}-model")
        try:
            container = self.client.containers.create(
                image,
                name=container.name,
                user=user,
                environment={
                    "EASEML_FEATURES": features_in,
                    "EASEML_OUTPUT": CONTAINER_OUTPUT_DIR,
                    "EASEML_ROWS": str(ws.n_rows),
                    "HOME": "/tmp", "TMPDIR": "/tmp",
                },
                mounts=[
                    Mount(features_in, str(ws.features), type="bind", read_only=True),
                    Mount(CONTAINER_OUTPUT_DIR, volume.name, type="volume", read_only=False, no_copy=True),
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
                labels={**labels, LABEL: "model"},
                detach=True,
            )
            # Attach before starting: the output arrives live from the container's stdio (the
            # daemon's size-capped log file may rotate), and BoundedLog keeps memory bounded.
            # demux keeps stderr apart: a developer may see a short tail of it, never stdout.
            stream = self.client.api.attach(container.id, stdout=True, stderr=True, stream=True,
                                            logs=True, demux=True)
            follower = threading.Thread(target=self._follow, args=(stream, log_out, err_out), daemon=True)
            follower.start()
            try:
                state["started"] = True  # until the daemon says it never ran
                container.start()
            except docker.errors.APIError as exc:  # the image's command cannot start
                detail = exc.explanation or str(exc)
                container.reload()
                started_at = str(container.attrs.get("State", {}).get("StartedAt") or "")
                state["started"] = not started_at.startswith("0001-")
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
            cstate = container.attrs.get("State", {})
            if timed_out:
                raise ModelError("timeout", f"the model ran longer than {limits.timeout:g}s and "
                                 "was killed")
            if cstate.get("OOMKilled"):
                raise ModelError("oom", f"the model used more than {limits.memory >> 20} MiB of "
                                 "memory and was killed")
            code = int(status.get("StatusCode", cstate.get("ExitCode", -1)))
            used = self._copy_output(keeper, ws, limits.output)
            full = used >= limits.output - OUTPUT_SLACK
            err_text = err_out.getvalue() if err_out is not None else log_out.getvalue()
            if code != 0 and (full or code == 153 or "No space left on device" in err_text
                              or "File too large" in err_text):
                raise ModelError("output_too_large", "the model wrote more than "
                                 f"{limits.output >> 20} MiB to {CONTAINER_OUTPUT_DIR} and was stopped there")
            return code
        finally:
            self._drop(container, keeper)
            self._drop(volume)

    def reap_stale(self, now: float | None = None) -> list[str]:
        """Remove model containers (and their output volumes) past their deadline. A
        worker killed with SIGKILL cannot clean up its container; the next run on the same
        daemon does, so a sleeping model cannot outlive its limit by much."""
        now = time.time() if now is None else now
        removed = []
        try:
            stale = self.client.containers.list(all=True, filters={"label": LABEL})
            volumes = self.client.volumes.list(filters={"label": f"{LABEL}=output"})
        except docker.errors.DockerException:
            return removed
        for obj in [*stale, *volumes]:
            labels = (obj.labels if obj in stale else obj.attrs.get("Labels")) or {}
            try:
                deadline = float(labels.get(DEADLINE_LABEL, "inf"))
            except ValueError:
                continue
            if deadline < now:
                try:
                    obj.remove(force=True)
                    removed.append(obj.id)
                except docker.errors.DockerException:
                    pass
        if removed:
            log.warning("removed %d model container(s)/volume(s) left past their deadline", len(removed))
        return removed

    def reap_owner(self, owner: str) -> list[str]:
        """Remove every container and volume of the run whose ``OWNER_LABEL`` is ``owner``
        (the evaluating process died without its clean-up)."""
        removed = []
        flt = {"label": f"{OWNER_LABEL}={owner}"}
        try:
            for c in self.client.containers.list(all=True, filters=flt):
                self._drop(c)
                removed.append(c.id)
            for v in self.client.volumes.list(filters=flt):
                self._drop(v)
                removed.append(v.id)
        except docker.errors.DockerException:
            pass
        return removed

    @staticmethod
    def _follow(stream: Any, log_out: BoundedLog, err_out: BoundedLog | None = None) -> None:
        try:
            for out, err in stream:
                if out:
                    log_out.write(out.decode("utf-8", errors="replace"))
                if err:
                    text = err.decode("utf-8", errors="replace")
                    log_out.write(text)
                    if err_out is not None:
                        err_out.write(text)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            pass

    def _remove_images(self, refs: Iterable[str]) -> None:
        """Release images this runner built or found in the cache: they stay cached (the
        LRU budget decides, between builds, what goes), unless ``keep_images`` is off and
        the budget is 0."""
        for ref in refs:
            with self._leases_lock:
                held = self._leases.get(ref) or []
                lease = held.pop() if held else None
                if not held:
                    self._leases.pop(ref, None)
            if lease is not None:
                self.cache.touch(ref)
                lease.release()
        if not self.keep_images:
            self.cache.prune()

    # ---------------------------------------------------------------- predict
    def predict(self, repo_dir: str | os.PathLike[str], features_path: str | os.PathLike[str], *,
                tag: str, model: Mapping[str, Any] | None = None, limits: Limits | None = None,
                exclude: Sequence[str] = (), n_rows: int | None = None) -> RunResult:
        """Build the checkout's image, run it on the features, return its predictions
        (``n_rows``: the features' row count when the caller knows it).

        A :class:`ModelError` (or :class:`RunnerUnavailable`) raised once the container
        started carries ``spent=True``; its ``build_log`` is the build's part of the log,
        ``stderr`` the model's bounded stderr."""
        model = dict(model or {})
        limits = (limits or Limits.from_env()).lowered_by(model)
        repo = Path(repo_dir).resolve()
        timings: dict[str, float] = {}
        build_log, run_log = BoundedLog(limits.log_bytes), BoundedLog(limits.log_bytes)
        err_log = BoundedLog(limits.log_bytes)
        state: dict[str, Any] = {"started": False}

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
                code = self.run(image, ws, limits=limits, log_out=run_log, tag=tag,
                                err_out=err_log, state=state)
            finally:
                timings["run"] = time.perf_counter() - t0
            if code != 0:
                sig = f" ({_SIGNALS[code]})" if code in _SIGNALS else ""
                raise ModelError("crash", f"the model exited with code {code}{sig}")
            t0 = time.perf_counter()
            ws.check_output_size(limits.output)
            preds = parse_predictions(find_predictions(ws.output), ws.n_rows)
            timings["parse"] = time.perf_counter() - t0
            return RunResult(predictions=preds, log=full_log(), timings=timings,
                             build_log=build_log.getvalue())
        except ModelError as exc:
            exc.log = full_log()
            exc.build_log = build_log.getvalue()
            exc.stderr = err_log.getvalue()
            exc.spent = exc.spent or bool(state["started"])
            exc.timings = {**timings, **exc.timings}
            raise
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            err = RunnerUnavailable(f"docker: {exc}")
            err.spent = bool(state["started"])
            raise err from None
        except RunnerUnavailable as exc:
            exc.spent = bool(state["started"])
            raise
        finally:
            if ws is not None:
                ws.remove()
            if image is not None:
                self._remove_images([image])
