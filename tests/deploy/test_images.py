"""master/Dockerfile and worker/Dockerfile build FROM the locally made base image (no
registry pull), and the containers they make work together: the master comes up healthy
(create-master, upgrade-master, UI), a worker claims a name, connects and is healthy.

Networking stays on loopback: the master runs with --network none and the workers join its
network namespace, so worker -> master is 127.0.0.1 inside that namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from deploy.helpers import BASE_IMAGE, ROOT, build_context, require_docker
from support.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.docker
# The images' own HEALTHCHECK commands, polled faster than in production.
FAST_HEALTH = ("--health-interval", "2s", "--health-start-period", "60s")


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}: {r.stderr[-2000:]}")
    return r


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    require_docker(BASE_IMAGE)
    ctx = build_context(tmp_path_factory.mktemp("ctx") / "ctx")
    tag = uuid.uuid4().hex[:8]
    names = {"master": f"easeml-test/master:{tag}", "worker": f"easeml-test/worker:{tag}"}
    try:
        for part, image in names.items():
            docker("build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                   "-f", str(ctx / part / "Dockerfile"), "-t", image, str(ctx), timeout=1200)
        yield names
    finally:
        for image in names.values():
            docker("rmi", "-f", image, check=False)


@pytest.fixture
def cleanup():
    containers: list[str] = []
    volumes: list[str] = []
    yield containers, volumes
    if os.environ.get("EASEML_KEEP_CONTAINERS"):
        return
    for c in reversed(containers):
        docker("rm", "-f", "-v", c, check=False)
    for v in volumes:
        docker("volume", "rm", "-f", v, check=False)


def wait_health(container: str, timeout: float = 150) -> str:
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        r = docker("inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                   container, check=False)
        status = r.stdout.strip()
        if status.endswith("healthy") and not status.endswith("unhealthy"):
            return status
        if status.startswith(("exited", "dead")):
            break
        time.sleep(2)
    logs = docker("logs", "--tail", "40", container, check=False)
    raise AssertionError(f"{container}: {status}\n{logs.stdout}{logs.stderr}")


def test_images_build_from_the_local_base_and_share_layers(images):
    inspect = json.loads(docker("image", "inspect", images["master"], images["worker"]).stdout)
    base = json.loads(docker("image", "inspect", BASE_IMAGE).stdout)[0]
    base_layers = base["RootFS"]["Layers"]
    for img in inspect:
        assert img["RootFS"]["Layers"][: len(base_layers)] == base_layers
    m, w = (img["RootFS"]["Layers"] for img in inspect)
    # Everything up to the installed package is shared (one dependency install).
    assert len(set(m) & set(w)) >= len(base_layers) + 5
    out = docker("run", "--rm", "--network", "none", images["worker"], "sh", "-c",
                 "easeml --version && gpg --version | head -1 && git --version && flock --version").stdout
    assert "easeml 0.1.0" in out and "gpg (GnuPG)" in out


def test_master_and_scaled_workers_come_up_healthy(images, cleanup, tmp_path):
    containers, volumes = cleanup
    run = uuid.uuid4().hex[:8]
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost",
                    "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    master = f"easeml-test-master-{run}"
    containers.append(master)
    docker("run", "-d", "--name", master, "--network", "none", *FAST_HEALTH,
           "-e", "EASEML_FORGE=local", "-e", "EASEML_LOCAL_REPO=/repo", "-v", f"{repo}:/repo:ro",
           "-e", "EASEML_WORKER_PASSWORD=test-password", "-e", "EASEML_WORKER_SLOTS=2",
           "-e", "EASEML_DB_URL=sqlite:////var/lib/buildbot/state.sqlite",
           "-e", "EASEML_LEDGER_URL=sqlite:////var/lib/buildbot/ledger.sqlite",
           "-e", "EASEML_SMTP_ENABLED=false", images["master"])
    assert wait_health(master).endswith("healthy")

    names_volume = f"easeml-test-names-{run}"
    volumes.append(names_volume)
    workers = []
    for i in range(3):  # two slots: the third replica must refuse, naming the setting
        w = f"easeml-test-worker-{run}-{i}"
        containers.append(w)
        workers.append(w)
        docker("run", "-d", "--name", w, "--network", f"container:{master}", *FAST_HEALTH,
               "-e", "EASEML_WORKER_MASTER=127.0.0.1:9989", "-e", "EASEML_WORKER_PASSWORD=test-password",
               "-e", "EASEML_WORKER_SLOTS=2", "-v", "/var/run/docker.sock:/var/run/docker.sock",
               "-v", f"{names_volume}:/var/lib/easeml/names", images["worker"])
        if i < 2:
            wait_health(w)
    time.sleep(2)
    third = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", workers[2]).stdout.split()
    assert third == ["exited", "1"]
    assert "raise EASEML_WORKER_SLOTS" in docker("logs", workers[2]).stderr
    name_of = {w: docker("logs", w).stdout.split()[2] for w in workers[:2]}
    assert sorted(name_of.values()) == ["worker-1", "worker-2"]

    # docker-compose.yml's own healthcheck commands pass in these containers too.
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for container, service in ((master, "master"), (workers[0], "worker")):
        test = services[service]["healthcheck"]["test"]
        assert test[0] == "CMD"
        r = docker("exec", container, *test[1:], check=False)
        assert r.returncode == 0, f"compose healthcheck of {service}: {r.stderr}"

    api = docker("exec", master, "python3", "-c",
                 "import json, urllib.request; print(urllib.request.urlopen("
                 "'http://127.0.0.1:8010/api/v2/workers').read().decode())").stdout
    connected = sorted(w["name"] for w in json.loads(api)["workers"] if w["connected_to"])
    assert connected == ["worker-1", "worker-2"]

    # A removed replica frees its name for the next one.
    docker("rm", "-f", workers[0])
    w = f"easeml-test-worker-{run}-again"
    containers.append(w)
    docker("run", "-d", "--name", w, "--network", f"container:{master}", *FAST_HEALTH,
           "-e", "EASEML_WORKER_MASTER=127.0.0.1:9989", "-e", "EASEML_WORKER_PASSWORD=test-password",
           "-e", "EASEML_WORKER_SLOTS=2", "-v", "/var/run/docker.sock:/var/run/docker.sock",
           "-v", f"{names_volume}:/var/lib/easeml/names", images["worker"])
    wait_health(w)
    assert docker("logs", w).stdout.split()[2] == name_of[workers[0]]


@pytest.mark.postgres
def test_master_image_runs_on_postgresql_as_in_compose(images, cleanup, tmp_path, postgres_url):
    """The compose configuration: Buildbot's database and the ledger on PostgreSQL through
    `postgresql+psycopg://` URLs; the master migrates its schema and comes up healthy."""
    import sqlalchemy as sa

    from support.buildbot_harness import free_port

    containers, _ = cleanup
    url = postgres_url
    assert url.startswith("postgresql+psycopg://")  # the driver docker-compose.yml names
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    www, pb = free_port(), free_port()
    master = f"easeml-test-master-pg-{uuid.uuid4().hex[:8]}"
    containers.append(master)
    # Host networking so the container reaches the test's PostgreSQL on 127.0.0.1; the
    # master binds to loopback only.
    docker("run", "-d", "--name", master, "--network", "host", *FAST_HEALTH,
           "-e", "EASEML_FORGE=local", "-e", "EASEML_LOCAL_REPO=/repo", "-v", f"{repo}:/repo:ro",
           "-e", "EASEML_WORKER_PASSWORD=pw", "-e", f"EASEML_WWW_PORT={www}", "-e", f"EASEML_WORKER_PORT={pb}",
           "-e", "EASEML_BIND_ADDRESS=127.0.0.1", "-e", f"EASEML_BUILDBOT_URL=http://127.0.0.1:{www}/",
           "-e", f"EASEML_DB_URL={url}", "-e", f"EASEML_LEDGER_URL={url}",
           "-e", "EASEML_SMTP_ENABLED=false", images["master"])
    wait_health(master)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            active = conn.execute(sa.text("select count(*) from masters where active = 1")).scalar()
    finally:
        engine.dispose()
    assert {"builds", "changes", "masters", "workers"} <= tables
    assert active == 1


def test_containerised_master_and_worker_evaluate_a_commit(images, cleanup, tmp_path):
    """The deployment path end to end: the master image (local forge) and the worker image
    (host Docker socket, run directory at the same path inside and out) evaluate a real
    commit of the demo's model repository, with the model in its own sandbox container."""
    from easeml_buildbot.custody.keys import create_keypair
    from easeml_buildbot.demo.repo import COMMITS, DemoRepo

    containers, volumes = cleanup
    # The worker image runs Debian bookworm's python3 (3.11.2, no tarfile extraction filters):
    # the runner's commit export must work there too.
    probe = docker("run", "--rm", "--network", "none", images["worker"], "sh", "-c",
                   "cd /tmp && git init -q r && cd r && echo x > f && git add f && "
                   "git -c user.name=t -c user.email=t@t commit -qm m && python3 -c "
                   "\"from pathlib import Path; from easeml_buildbot.runner.evaluate import export_commit; "
                   "export_commit(Path('/tmp/r'), 'HEAD', Path('/tmp/out'))\" && cat /tmp/out/f", check=False)
    assert probe.returncode == 0 and probe.stdout.strip() == "x", probe.stderr[-2000:]
    run = uuid.uuid4().hex[:8]
    keys = tmp_path / "keys"
    pub, priv = create_keypair(keys, "easeml test service", "easeml-test@localhost", None)
    os.chmod(keys, 0o755)
    os.chmod(priv, 0o644)  # read by the container's root; the directory is the test's own
    repo = DemoRepo(tmp_path / "repo", pub)
    repo.create()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    master = f"easeml-test-master-e2e-{run}"
    containers.append(master)
    docker("run", "-d", "--name", master, "--network", "none", *FAST_HEALTH,
           "-e", "EASEML_FORGE=local", "-e", "EASEML_LOCAL_REPO=/repo", "-e", "EASEML_LOCAL_POLL_INTERVAL=1",
           "-e", "EASEML_LOCAL_PROJECT=test/digits", "-v", f"{repo.path}:/repo:ro",
           "-e", "EASEML_WORKER_PASSWORD=pw", "-e", "EASEML_WORKER_SLOTS=1",
           "-e", "EASEML_DB_URL=sqlite:////var/lib/buildbot/state.sqlite",
           "-e", "EASEML_LEDGER_URL=sqlite:////var/lib/buildbot/ledger.sqlite",
           "-e", "EASEML_SMTP_ENABLED=false", images["master"])
    wait_health(master)
    worker = f"easeml-test-worker-e2e-{run}"
    containers.append(worker)
    docker("run", "-d", "--name", worker, "--network", f"container:{master}", *FAST_HEALTH,
           "-e", "EASEML_WORKER_MASTER=127.0.0.1:9989", "-e", "EASEML_WORKER_PASSWORD=pw",
           "-e", "EASEML_WORKER_NAME=worker-1", "-e", "EASEML_WORKER_KEY=/keys/easeml_priv.asc",
           "-e", "EASEML_WORKER_RUNNER=docker", "-e", f"EASEML_RUN_DIR={run_dir}",
           "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", f"{run_dir}:{run_dir}",
           # as docker-compose.yml: the host's cgroups, for the per-build cgroup of the limits
           "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
           "-v", f"{keys}:/keys:ro", "-v", f"{repo.path}:/repo:ro", images["worker"])
    wait_health(worker)
    # Let the poller take the initial commit as its starting point, then commit a model.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log = docker("exec", master, "cat", "/var/lib/buildbot/twistd.log", check=False).stdout
        if "gitpoller: processing changes" in log:
            break
        time.sleep(1)
    better = repo.commit_model(COMMITS[0])

    def api(path: str):
        out = docker("exec", master, "python3", "-c",
                     f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8010/api/v2/{path}', "
                     "timeout=20).read().decode())").stdout
        data = json.loads(out)
        return data[[k for k in data if k != "meta"][0]]

    deadline = time.monotonic() + 300
    builds: list = []
    while time.monotonic() < deadline:
        builds = [b for b in api("builds") if b["complete"]]
        if builds:
            break
        time.sleep(3)
    assert builds, docker("exec", master, "tail", "-c", "4000", "/var/lib/buildbot/twistd.log").stdout
    props = {k: v[0] for k, v in api(f"builds/{builds[0]['buildid']}/properties")[0].items()}
    assert props["revision"] == better.sha
    assert props["easeml_status"] == "evaluated", props.get("easeml_cause")
    assert props["easeml_verdict"] == "pass" and props["easeml_uses_left"] == 7
    # The run directory was used through the host daemon and cleaned up afterwards.
    assert list(run_dir.iterdir()) == []
