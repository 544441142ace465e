"""The model's image build against the real daemon: hostile Dockerfiles meet the build
sandbox (no way out to the worker's network, limits on memory, CPU, processes and disk,
nothing of the worker's environment) and the cache shares layers without the old race."""

from __future__ import annotations

import dataclasses
import http.server
import re
import secrets
import threading
import time

import docker
import pytest

from easeml_buildbot.runner.base import BoundedLog, Limits, ModelError
from easeml_buildbot.runner.docker_runner import DockerRunner
from easeml_buildbot.runner.image_cache import REPOSITORY, ImageCache
from runner_sandbox import features_csv, model_dir
from support.models import BUSYBOX_IMAGE, DEFAULT_BASE_IMAGE

pytestmark = pytest.mark.docker

# the operator limits of issue 11's report: 256 MiB, 64 processes
LIMITS = Limits(memory=256 << 20, pids=64, cpus=0.5, timeout=60, build_timeout=120,
                build_disk=256 << 20)


@pytest.fixture(scope="module")
def runner(docker_client):
    return DockerRunner(docker_client)


def _build_fails(runner, tmp_path, dockerfile, tag, limits=LIMITS, extra=None):
    src = model_dir(tmp_path / "m", "write_predictions()\n", dockerfile=dockerfile, extra=extra)
    log = BoundedLog(1 << 20)
    with pytest.raises(ModelError) as err:
        ref, _ = runner.build(src, tag=tag, model={}, limits=limits, log_out=log)
        runner._remove_images([ref])
    assert err.value.cause == "build_failed", err.value
    return err.value, log.getvalue()


@pytest.fixture
def secret_server():
    """A secret served on the worker's loopback (what `ADD <url>` fetched in issue 11)."""
    secret = f"worker-secret-{secrets.token_hex(8)}"
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            body = secret.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/secret", secret, hits
    srv.shutdown()
    srv.server_close()


def test_add_url_is_refused_before_the_daemon_fetches_it(runner, tmp_path, tag, secret_server):
    url, secret, hits = secret_server
    err, log = _build_fails(runner, tmp_path, f"FROM {BUSYBOX_IMAGE}\nWORKDIR /m\n"
                            f"ADD {url} /m/secret\nRUN cat /m/secret\n", tag)
    assert "Dockerfile:3: ADD http://127.0.0.1" in err.message
    assert "worker host's network" in err.message
    assert not hits, "the daemon fetched the URL"
    assert secret not in log and secret not in err.message


@pytest.mark.parametrize("hide,line", [
    ("RUN echo \\\r#\n", 3),                            # a lone CR (the daemon splits at LF)
    ("RUN echo \\\n\x1c\n", 4),                         # U+001C: blank to Python, text to Go
    ("RUN true #`\n", 3),                                  # after '# foo=bar' '# escape=`'
    ("", 2),                                                # ADD --chown=0\v<url> (a Go space)
    # a user "aÅ" made first; the daemon reads --chown=aŠ<url> (Š is C5 A0) as --chown=aÅ <url>
    ('RUN printf "a\\303\\205:x:0:0::/:/bin/sh\\n" >> /etc/passwd && '
     'printf "a\\303\\205:x:0:\\n" >> /etc/group\n', 3),
    (("#" + "x" * 99 + "\n") * 11000, None),                # past the first MiB checked
])
def test_add_url_hidden_from_the_parser_is_refused(runner, tmp_path, tag, secret_server, hide, line):
    """Red team: each of these built and fetched the loopback secret (the parser read the
    file differently from the daemon, or only its first MiB)."""
    url, secret, hits = secret_server
    head = "# foo=bar\n# escape=`\n" if "`" in hide else ""
    flag = "--chown=0\v" if hide == "" else "--chown=a\u0160" if "passwd" in hide else ""
    dockerfile = f"{head}FROM {BUSYBOX_IMAGE}\n{hide}ADD {flag}{url} /s\nRUN cat /s\n"
    err, log = _build_fails(runner, tmp_path, dockerfile, tag)
    assert not hits, "the daemon fetched the URL"
    assert secret not in log
    if line is None:
        assert "more than the 1048576 checked" in err.message, err.message
    else:
        assert f"Dockerfile:{line + (2 if head else 0)}: ADD http://127.0.0.1" in err.message, \
            err.message


@pytest.mark.parametrize("quote", ["escape", "double", "json"])
def test_add_url_in_quotes_or_escapes_is_refused(runner, tmp_path, tag, secret_server, quote):
    """Red team: the daemon's shell lexer made these URLs (and fetched them)."""
    url, secret, hits = secret_server
    src = {"escape": f"h\\ttp{url[4:]} /s", "double": f'"{url}" /s',
           "json": f'["h\\\\ttp{url[4:]}", "/s"]'}[quote]
    err, log = _build_fails(runner, tmp_path, f"FROM {BUSYBOX_IMAGE}\nADD {src}\nRUN cat /s\n", tag)
    assert not hits, "the daemon fetched the URL"
    assert secret not in log and "Dockerfile:2:" in err.message, err.message


def test_copy_from_the_current_stage_name_is_checked_as_an_image(runner, tmp_path, tag):
    """Red team: the daemon reads `COPY --from=<the current stage's name>` as an image and
    pulls docker.io/library/<name> (past EASEML_ALLOWED_IMAGES) when it is not local; the
    parser took it for a stage and never checked it."""
    name = f"rt{tag.replace('-', '')}"
    err, _ = _build_fails(runner, tmp_path, f"FROM {BUSYBOX_IMAGE} AS {name}\n"
                          f"COPY --from={name} /bin/sh /x\n", tag)
    assert f"Dockerfile:2: COPY --from {name}: image 'docker.io/library/{name}:latest' is not " \
        "allowed on this worker" in err.message, err.message


@pytest.mark.parametrize("line,why", [
    ("RUN --network=host true", "--network=host is not allowed"),
    ("RUN --mount=type=secret,id=x true", "type=secret is not allowed"),
    ("COPY --from=127.0.0.1:5999/elsewhere:1 / /x", "is not allowed on this worker"),
    ("COPY --from=easeml-model/cache:abc / /x", "images of other models"),
])
def test_other_ways_out_are_refused_with_their_line(runner, tmp_path, tag, line, why):
    err, _ = _build_fails(runner, tmp_path, f"FROM {BUSYBOX_IMAGE}\n{line}\n", tag)
    assert "Dockerfile:2:" in err.message and why in err.message, err.message


def test_build_memory_is_limited(runner, tmp_path, tag):
    err, log = _build_fails(runner, tmp_path, f"FROM {DEFAULT_BASE_IMAGE}\nRUN python3 -c \""
                            "x = bytearray(1 << 30); x[::4096] = b'1' * len(x[::4096]); "
                            "print('ALLOC' + 'ATED')\"\n", tag)
    assert "ALLOCATED" not in log
    assert "more than 256 MiB of memory" in err.message, err.message


FORKS = """
import os, time
n = 0
try:
    for n in range(400):
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
    print("FORKED", "ALL")
except OSError:
    print("FORK FAILED AT", n)
    raise
"""

BUSY = """
import os, time
t0 = time.time()
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while time.time() - t0 < 3:
            pass
        os._exit(0)
    pids.append(pid)
for p in pids:
    os.waitpid(p, 0)
c = os.times()
print("CPU RATIO %.2f" % ((c.children_user + c.children_system) / (time.time() - t0)))
raise SystemExit(1)
"""


def test_build_processes_are_limited(runner, tmp_path, tag):
    err, log = _build_fails(runner, tmp_path, f"FROM {DEFAULT_BASE_IMAGE}\nCOPY f.py /f.py\n"
                            "RUN python3 /f.py\n", tag, extra={"f.py": FORKS})
    assert "FORKED ALL" not in log, log
    n = int(re.search(r"FORK FAILED AT (\d+)", log).group(1))
    print("build forks under pids=64:", n)
    assert 0 < n < 64
    assert "limit of 64 processes" in err.message, err.message


def test_build_cpu_is_limited(runner, tmp_path, tag):
    # two busy processes for 3 s of wall time: on 2 idle cores they get ~6 s of CPU (ratio
    # 2); under a 0.2-core quota at most 0.6 s (ratio 0.2)
    limits = dataclasses.replace(LIMITS, cpus=0.2)
    _, log = _build_fails(runner, tmp_path, f"FROM {DEFAULT_BASE_IMAGE}\nCOPY c.py /c.py\n"
                          "RUN python3 /c.py\n", tag, extra={"c.py": BUSY}, limits=limits)
    ratio = float(re.search(r"CPU RATIO ([0-9.]+)", log).group(1))
    print("build CPU ratio under cpus=0.2:", ratio)
    assert ratio < 0.2 * 1.25


@pytest.mark.parametrize("tail", ["", " && sleep 60"])
def test_build_disk_is_limited(runner, tmp_path, tag, tail):
    t0 = time.monotonic()
    err, log = _build_fails(runner, tmp_path, f"FROM {BUSYBOX_IMAGE}\n"
                            f"RUN dd if=/dev/zero of=/big bs=1M count=512{tail}\nRUN echo NEXT$((1+1))\n", tag)
    assert "more than 256 MiB to its image layers" in err.message, err.message
    assert "NEXT2" not in log
    assert time.monotonic() - t0 < 40


def test_build_disk_limit_covers_volumes(runner, tmp_path, tag):
    """Red team: a RUN step's writes under a VOLUME of the image go to an anonymous volume
    of the step container, which its SizeRw does not count."""
    small = dataclasses.replace(LIMITS, build_disk=64 << 20)
    err, log = _build_fails(runner, tmp_path, f"FROM {BUSYBOX_IMAGE}\nVOLUME /v\n"
                            "RUN dd if=/dev/zero of=/v/big bs=1M count=160 && sleep 5 && "
                            "echo WROTE$((1+1))\n", tag, limits=small)
    assert "WROTE2" not in log
    assert "Dockerfile:2: VOLUME is not allowed" in err.message, err.message


def test_a_base_image_with_a_volume_is_refused(docker_client, runner, tmp_path, tag):
    """The same through a base image (a local one, or one on the allow-list) that declares
    the VOLUME: its anonymous volumes escape the build disk limit."""
    base = f"easeml-test-volume-base:{tag}"
    img, _ = docker_client.images.build(fileobj=__import__("io").BytesIO(
        f"FROM {BUSYBOX_IMAGE}\nVOLUME /v\n".encode()), tag=base, rm=True, forcerm=True)
    try:
        err, _ = _build_fails(runner, tmp_path, f"FROM {base}\n"
                              "RUN dd if=/dev/zero of=/v/big bs=1M count=160\n", tag,
                              limits=dataclasses.replace(LIMITS, build_disk=64 << 20))
        assert "declares VOLUME /v" in err.message, err.message
    finally:
        docker_client.images.remove(base, noprune=True)


def test_nothing_of_the_worker_environment_enters_the_build(docker_client, tmp_path, tag, monkeypatch):
    marker = f"worker-env-{secrets.token_hex(6)}"
    monkeypatch.setenv("EASEML_TEST_MARKER", marker)
    # the worker's Docker config has a proxy: the SDK would pass it as build arguments
    cfg = tmp_path / "docker-config"
    cfg.mkdir()
    (cfg / "config.json").write_text('{"proxies": {"default": {"httpProxy": "http://%s:1", '
                                     '"noProxy": "%s"}}}' % (marker, marker))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    runner = DockerRunner(docker.from_env(timeout=120))
    src = model_dir(tmp_path / "m", "write_predictions()\n", dockerfile=(
        f"FROM {BUSYBOX_IMAGE}\nARG HTTP_PROXY\nARG http_proxy\nARG no_proxy\nRUN env; echo ENV DONE\n"))
    log = BoundedLog(1 << 20)
    ref, _ = runner.build(src, tag=tag, model={}, limits=LIMITS, log_out=log)
    runner._remove_images([ref])
    assert "ENV DONE" in log.getvalue()
    assert marker not in log.getvalue()


def test_concurrent_builds_share_layers_and_prune_waits(docker_client, tmp_path, tag):
    """The race behind the old nocache: two builds of one Dockerfile prefix, the first
    finishes and cleans up while the second still builds on the shared layers. Now the
    second uses the first's layers (cache on), and the clean-up (a prune to a budget of 0)
    waits until no build holds the cache."""
    cache = ImageCache(docker_client, tmp_path / "cache", budget=0)
    runner = DockerRunner(docker_client, image_cache=cache)
    prefix = f"FROM {BUSYBOX_IMAGE}\nRUN echo {tag} > /prefix\n"
    fast = model_dir(tmp_path / "a", "", dockerfile=prefix + "RUN echo fast\n")
    slow = model_dir(tmp_path / "b", "", dockerfile=prefix + "RUN sleep 4\nRUN cat /prefix\n")
    log_a, log_b = BoundedLog(1 << 20), BoundedLog(1 << 20)
    ref_a, _ = runner.build(fast, tag=tag, model={}, limits=LIMITS, log_out=log_a)
    result: dict = {}

    def build_b():
        try:
            result["ref"] = runner.build(slow, tag=tag, model={}, limits=LIMITS, log_out=log_b)[0]
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=build_b)
    t.start()
    while "sleep 4" not in log_b.getvalue() and t.is_alive():
        time.sleep(0.05)
    runner._remove_images([ref_a])           # A is done: release and prune (budget 0) ...
    assert cache.prune() is None             # ... which waits: B holds the cache
    t.join(60)
    assert "error" not in result, result.get("error")
    assert "Using cache" in log_b.getvalue()  # B built on A's prefix layer
    assert tag in log_b.getvalue().split("RUN cat /prefix")[1]
    runner._remove_images([result["ref"]])
    assert not docker_client.images.list(name=REPOSITORY, filters={"label": "easeml.runner=model"}) \
        or all(not (set(i.tags) & {ref_a, result["ref"]})
               for i in docker_client.images.list(name=REPOSITORY))


def test_same_model_builds_once_and_lru_keeps_the_budget(docker_client, tmp_path, tag):
    cache = ImageCache(docker_client, tmp_path / "cache", budget=1 << 40)
    runner = DockerRunner(docker_client, image_cache=cache)
    feats = features_csv(tmp_path / "f.csv", rows=3)
    refs = []
    try:
        # the same model in two pull requests (two checkouts): one build
        for name in ("pr1", "pr2"):
            src = model_dir(tmp_path / name, f"write_predictions()  # {tag}\n")
            res = runner.predict(src, feats, tag=tag, model={}, limits=LIMITS)
            refs.append(res.log.split("Successfully tagged ")[-1].split()[0]
                        if "Successfully tagged" in res.log else None)
        assert refs[0] and refs[1] is None, "the second PR built again"
        # another model: over a budget that fits one model, the older one is evicted
        other = model_dir(tmp_path / "other", f"write_predictions(2)  # {tag}\n")
        res = runner.predict(other, feats, tag=tag, model={}, limits=LIMITS)
        refs.append(res.log.split("Successfully tagged ")[-1].split()[0])
        _, per_ref = cache.usage()
        cache.budget = per_ref[refs[2]]
        assert cache.prune() <= cache.budget
        assert not cache._exists(refs[0]) and cache._exists(refs[2])
    finally:
        cache.budget = 0
        cache.prune()


@pytest.fixture(scope="module")
def registry_image(docker_client, tmp_path_factory):
    """The local busybox base pushed into a real registry on loopback under another name,
    and that name removed locally: a build FROM it must pull."""
    from support.registry import start_registry

    reg = start_registry(tmp_path_factory.mktemp("registry"))
    if reg is None:
        pytest.skip("docker-registry is not installed (scripts/setup.sh installs it)")
    name = f"{reg.host}/easeml-test/base-{secrets.token_hex(4)}"
    try:
        docker_client.images.get(BUSYBOX_IMAGE).tag(name, tag="1")
        for line in docker_client.api.push(name, tag="1", stream=True, decode=True):
            assert "error" not in line, line
        digest = docker_client.images.get(f"{name}:1").attrs["RepoDigests"][0].split("@")[1]
        docker_client.images.remove(f"{name}:1")
        yield reg, name, digest
    finally:
        for img in docker_client.images.list(name=name):
            for t in img.tags:
                docker_client.images.remove(t)
        for img in docker_client.images.list(all=True):
            for d in img.attrs.get("RepoDigests") or []:
                if d.startswith(name + "@"):
                    docker_client.images.remove(d)
        reg.stop()


def _gone(client, ref):
    try:
        client.images.get(ref)
        return False
    except docker.errors.ImageNotFound:
        return True


@pytest.mark.parametrize("pin", ["tag", "digest"])
def test_allowed_base_image_is_pulled_from_the_registry(docker_client, registry_image, tmp_path,
                                                        tag, pin):
    from easeml_buildbot.runner.images import AllowedImages

    reg, name, digest = registry_image
    ref = f"{name}:1" if pin == "tag" else f"{name}@{digest}"
    assert _gone(docker_client, ref)
    runner = DockerRunner(docker_client, allowed_images=AllowedImages.parse(
        f"docker.io/library/python:3.*,{reg.host}/easeml-test/*"))
    src = model_dir(tmp_path / "m", "", dockerfile=f"FROM {ref}\nRUN echo built on pulled\n")
    log = BoundedLog(1 << 20)
    image, _ = runner.build(src, tag=tag, model={}, limits=LIMITS, log_out=log)
    assert not _gone(docker_client, ref)
    runner._remove_images([image])
    assert f"pulling {ref}" in log.getvalue()
    assert "built on pulled" in log.getvalue()
    # a pulled base counts against the cache's budget (0 here): evicted after the run
    assert _gone(docker_client, ref)


def test_base_image_outside_the_list_is_refused(docker_client, registry_image, tmp_path, tag):
    from easeml_buildbot.runner.images import AllowedImages

    reg, name, _ = registry_image
    runner = DockerRunner(docker_client, allowed_images=AllowedImages.parse("ghcr.io/acme/*"))
    err, _ = _build_fails(runner, tmp_path, f"FROM easeml/busybox\nFROM {name}:1\n", tag)
    assert f"Dockerfile:2: FROM {name}:1: image '{name}:1' is not allowed" in err.message
    assert "EASEML_ALLOWED_IMAGES = ghcr.io/acme/*" in err.message
    assert _gone(docker_client, f"{name}:1")


def test_pulls_authenticate_with_the_workers_docker_config(docker_client, tmp_path_factory, tmp_path,
                                                           tag, monkeypatch):
    """A registry that wants credentials: the worker's Docker config (DOCKER_CONFIG) has
    them and the pull works; a worker without them cannot pull (nothing else supplies any)."""
    import base64
    import json

    from easeml_buildbot.runner.images import AllowedImages
    from support.registry import start_registry

    user, password = "easeml", secrets.token_hex(8)
    reg = start_registry(tmp_path_factory.mktemp("registry-auth"), users={user: password})
    if reg is None:
        pytest.skip("docker-registry is not installed (scripts/setup.sh installs it)")
    name = f"{reg.host}/easeml-test/private-{secrets.token_hex(4)}"
    try:
        docker_client.images.get(BUSYBOX_IMAGE).tag(name, tag="1")
        for line in docker_client.api.push(name, tag="1", stream=True, decode=True,
                                           auth_config={"username": user, "password": password}):
            assert "error" not in line, line
        docker_client.images.remove(f"{name}:1")
        allowed = AllowedImages.parse(f"{reg.host}/easeml-test/*")
        src = model_dir(tmp_path / "m", "", dockerfile=f"FROM {name}:1\nRUN echo private base\n")
        configs = {}
        for who, auths in (("stranger", {}),
                           ("worker", {reg.host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}})):
            d = tmp_path / f"docker-{who}"
            d.mkdir()
            (d / "config.json").write_text(json.dumps({"auths": auths}))
            configs[who] = d
        monkeypatch.setenv("DOCKER_CONFIG", str(configs["stranger"]))
        stranger = DockerRunner(docker.from_env(timeout=120), allowed_images=allowed)
        err, _ = _build_fails(stranger, tmp_path / "s", f"FROM {name}:1\n", tag)
        assert "pulling the image failed" in err.message
        assert password not in err.message
        monkeypatch.setenv("DOCKER_CONFIG", str(configs["worker"]))
        worker = DockerRunner(docker.from_env(timeout=120), allowed_images=allowed)
        log = BoundedLog(1 << 20)
        ref, _ = worker.build(src, tag=tag, model={}, limits=LIMITS, log_out=log)
        worker._remove_images([ref])
        assert "private base" in log.getvalue() and password not in log.getvalue()
    finally:
        for img in docker_client.images.list(name=name):
            for t in img.tags:
                docker_client.images.remove(t)
        reg.stop()


def test_onbuild_triggers_of_a_base_image_obey_the_same_rules(docker_client, runner, tmp_path, tag,
                                                              secret_server):
    """Who can push to an allowed repository can put `ONBUILD ADD <url>` into a base image:
    the trigger runs in the model's build as if it were in its Dockerfile."""
    url, secret, hits = secret_server
    base = f"easeml-test/onbuild-{secrets.token_hex(4)}:1"
    d = tmp_path / "base"
    d.mkdir()
    (d / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nONBUILD ADD {url} /secret\n")
    docker_client.images.build(path=str(d), tag=base, rm=True)
    try:
        err, log = _build_fails(runner, tmp_path, f"FROM {base}\nRUN cat /secret\n", tag)
        assert f"Dockerfile:1: FROM {base}" in err.message
        assert "ONBUILD triggers" in err.message and "worker host's network" in err.message
        assert not hits and secret not in log
    finally:
        docker_client.images.remove(base)
