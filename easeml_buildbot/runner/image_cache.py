"""The worker's cache of model images, keyed by what the image is built from, with an LRU
byte budget.

Key: the content of the filtered build context (names, modes, link targets and bytes of
every file, not their times), the Dockerfile's path, the build settings (network, the
operator's build arguments) and the ids of the base images the Dockerfile names. The same
model in two pull requests therefore builds once, and a re-run reuses the image; a moved
base tag gives a new key.

Base images pulled from the operator's allow-list count against the same budget and are
evicted the same way (a later build pulls them again); images the operator put on the
worker are never touched.

Layers are shared by the daemon's own build cache (the classic builder reuses a step whose
parent and instruction match). Nothing on the build path ever deletes an image: two builds
of one Dockerfile prefix share layers safely. Images are deleted only by :meth:`prune` (and only those in this cache's index),
which runs between builds and holds the cache's lock exclusively, while every build and
run holds it shared (``flock`` on a file in the cache directory: every worker using one
daemon must use the same directory, ``EASEML_IMAGE_CACHE_DIR``). Prune keeps the model
images and their layers within ``EASEML_IMAGE_CACHE_BYTES``, evicting the least recently
used first; ``0`` keeps nothing (each image is removed after its run).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors

log = logging.getLogger(__name__)

REPOSITORY = "easeml-model/cache"
KEY_LABEL = "easeml.cache-key"
KEY_VERSION = "1"
DEFAULT_BUDGET = 20 << 30


def default_dir() -> Path:
    base = os.environ.get("EASEML_IMAGE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "easeml-buildbot", "images")
    return Path(base)


def context_digest(ctx: IO[bytes]) -> str:
    """sha256 over the members of a build-context tar (sorted by name; times and owners
    left out, as the daemon's own cache leaves them out). ``ctx`` is rewound."""
    h = hashlib.sha256()
    ctx.seek(0)
    with tarfile.open(fileobj=ctx, mode="r:") as tar:
        members = sorted(tar.getmembers(), key=lambda m: m.name)
        for m in members:
            h.update(json.dumps([m.name, m.type.decode("latin-1"), m.mode & 0o7777,
                                 m.linkname, m.size]).encode())
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    ctx.seek(0)
    return h.hexdigest()


class Lease:
    """A shared hold on the cache: no prune runs while any lease is held."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None


class ImageCache:
    def __init__(self, client: docker.DockerClient, directory: Path | None = None,
                 budget: int | None = None) -> None:
        self.client = client
        self.dir = Path(directory) if directory is not None else default_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        if budget is None:
            from easeml_buildbot.runner.base import parse_bytes

            raw = os.environ.get("EASEML_IMAGE_CACHE_BYTES", "").strip()
            budget = parse_bytes(raw, default_unit="") if raw else DEFAULT_BUDGET
        self.budget = int(budget)
        self.lock_path = self.dir / "use.lock"
        self.index_path = self.dir / "index.json"

    # ------------------------------------------------------------------ keys
    @staticmethod
    def key(context_sha: str, dockerfile: str, settings: Mapping[str, Any],
            base_ids: Mapping[str, str]) -> str:
        doc = json.dumps({"v": KEY_VERSION, "context": context_sha, "dockerfile": dockerfile,
                          "settings": settings, "bases": dict(sorted(base_ids.items()))},
                         sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()

    @staticmethod
    def ref_for(key: str) -> str:
        return f"{REPOSITORY}:{key[:40]}"

    def lease(self) -> Lease:
        return Lease(self.lock_path)

    def lookup(self, ref: str) -> bool:
        try:
            self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return False
        self.touch(ref)
        return True

    # ----------------------------------------------------------------- index
    def _update_index(self, fn) -> dict[str, Any]:  # noqa: ANN001
        fd = os.open(self.index_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "r+") as fh:
                try:
                    data = json.loads(fh.read() or "{}")
                except ValueError:
                    data = {}
                data.setdefault("used", {})
                data.setdefault("orphans", [])
                data.setdefault("pulled", {})
                fn(data)
                fh.seek(0)
                fh.truncate()
                fh.write(json.dumps(data))
            return data
        finally:
            os.close(fd)

    def touch(self, ref: str) -> None:
        self._update_index(lambda d: d["used"].__setitem__(ref, time.time()))

    def touch_pulled(self, ref: str) -> None:
        """A base image this cache pulled (from the operator's allow-list) was used: it
        counts against the budget and is evicted like a model image."""
        self._update_index(lambda d: d["pulled"].__setitem__(ref, time.time()))

    def pulled(self) -> dict[str, float]:
        return dict(self._update_index(lambda d: None)["pulled"])

    def add_orphans(self, image_ids: Iterable[str]) -> None:
        """Step images of a failed build: removed by the next prune when nothing uses them."""
        ids = [i for i in image_ids if i]
        if ids:
            self._update_index(lambda d: d["orphans"].extend(i for i in ids if i not in d["orphans"]))

    # ----------------------------------------------------------------- sizes
    def _layers(self, image_id: str, memo: dict[str, tuple[int, str]]) -> list[tuple[str, int]]:
        """(id, own size) of an image and its untagged-by-others ancestors up to the
        first image that is not ours (a base image)."""
        out = []
        cur: str | None = image_id
        while cur:
            if cur not in memo:
                try:
                    attrs = self.client.images.get(cur).attrs
                except docker.errors.ImageNotFound:
                    break
                parent = attrs.get("Parent") or ""
                size = int(attrs.get("Size") or 0)
                tags = attrs.get("RepoTags") or []
                foreign = any(not t.startswith("easeml-model/") for t in tags)
                memo[cur] = (size, parent if not foreign else "#foreign")
            size, parent = memo[cur]
            if parent == "#foreign":
                break
            psize = 0
            if parent:
                if parent not in memo:
                    try:
                        pa = self.client.images.get(parent).attrs
                        ptags = pa.get("RepoTags") or []
                        memo[parent] = (int(pa.get("Size") or 0),
                                        "#foreign" if any(not t.startswith("easeml-model/") for t in ptags)
                                        else (pa.get("Parent") or ""))
                    except docker.errors.ImageNotFound:
                        memo[parent] = (0, "")
                psize = memo[parent][0]
            out.append((cur, max(0, size - psize)))
            cur = parent or None
        return out

    def usage(self) -> tuple[int, dict[str, int]]:
        """(bytes held by model images and their layers, {ref: bytes of its own chain})."""
        memo: dict[str, tuple[int, str]] = {}
        seen: dict[str, int] = {}
        per_ref: dict[str, int] = {}
        data = self._update_index(lambda d: None)
        # only the images of this cache's index: another cache (directory) on the same
        # daemon manages its own, and its builds hold only its lock
        for ref in data["used"]:
            try:
                img = self.client.images.get(ref)
            except docker.errors.ImageNotFound:
                continue
            layers = self._layers(img.id, memo)
            per_ref[ref] = sum(s for _, s in layers)
            seen.update(layers)
        for oid in data["orphans"]:
            seen.update(self._layers(oid, memo))
        for ref in data["pulled"]:
            try:
                img = self.client.images.get(ref)
            except docker.errors.ImageNotFound:
                continue
            per_ref[ref] = int(img.attrs.get("Size") or 0)
            seen[img.id] = per_ref[ref]
        return sum(seen.values()), per_ref

    # ----------------------------------------------------------------- prune
    def prune(self) -> int | None:
        """Evict least recently used model images until the cache fits its budget.
        Returns the bytes in use afterwards, or None when a build or run holds the cache
        (then the next one prunes)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            total, per_ref = self.usage()
            if total <= self.budget:
                return total
            data = self._update_index(lambda d: None)
            for oid in list(data["orphans"]):
                self._remove(oid)
            self._update_index(lambda d: d.__setitem__("orphans", [
                o for o in d["orphans"] if self._exists(o)]))
            total, per_ref = self.usage()
            used = {**data["pulled"], **data["used"]}
            for ref in sorted(per_ref, key=lambda r: used.get(r, 0.0)):
                if total <= self.budget:
                    break
                if self._remove(ref, pulled=ref in data["pulled"]):
                    self._update_index(lambda d: (d["used"].pop(ref, None), d["pulled"].pop(ref, None)))
                    total, _ = self.usage()
            return total
        finally:
            os.close(fd)

    def _exists(self, ref: str) -> bool:
        try:
            self.client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    def _remove(self, ref: str, pulled: bool = False) -> bool:
        try:
            img = self.client.images.get(ref)
            if not pulled and any(not t.startswith("easeml-model/") for t in img.tags):
                return False  # someone tagged it: not ours alone
            # no force: an image a container or a child image uses stays
            self.client.images.remove(ref, noprune=False)
            return True
        except docker.errors.DockerException as exc:
            log.debug("prune: kept %s: %s", ref, exc)
            return False
