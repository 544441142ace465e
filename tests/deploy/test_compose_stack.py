"""docker-compose.yml brought up as one stack, exactly as an operator runs it
(`docker compose up -d --build --scale worker=2`): PostgreSQL, the master built from
master/Dockerfile, two workers built from worker/Dockerfile on the host's Docker socket. A
real commit is evaluated through it (the local forge: a git repository mounted into the
containers), and the verdict and the single ledger use are read back from the stack's own
REST API and PostgreSQL.

The operator's files are used unchanged: docker-compose.yml is copied byte for byte next to
a copy of the build context (as .dockerignore lets it through, plus the host's CA bundle as
the documented extra-ca.pem), configured only through `.env` and a
`docker-compose.override.yml` (the standard compose mechanisms) in the test's tmp dir. The
override only mounts the local forge's repository and polls health faster.

No registry is reachable here, so the one image compose would pull, `postgres:15-bookworm`,
is built locally under that name from Debian's `postgresql` on the local Debian base
(tests/deploy/standins/postgres); an image of that name that is not the stand-in (a real
pull) is used as it is.

Every port is published on 127.0.0.1 only; containers, networks and volumes of the run's
compose project are removed afterwards. The master and worker images keep a fixed test tag
(easeml-test-compose/*:stack) so Docker's build cache serves the next run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from deploy.helpers import BASE_IMAGE, ROOT, build_context, compose_command, require_docker
from support.buildbot_harness import free_port

pytestmark = pytest.mark.docker

STANDINS = Path(__file__).resolve().parent / "standins"
POSTGRES_IMAGE = "postgres:15-bookworm"   # docker-compose.yml's default
STANDIN_LABEL = "org.easeml.stand-in"
IMAGE_PREFIX = "easeml-test-compose"
IMAGE_TAG = "stack"
SLOW_INIT = 8  # seconds of /docker-entrypoint-initdb.d on the first start
# The healthchecks are compose's own commands; only their polling is faster than in production.
# PostgreSQL gets an init script as slow as a first initdb on a slow disk or an operator's own
# /docker-entrypoint-initdb.d (it runs on the image's socket-only temporary server).
OVERRIDE = """\
services:
  postgres:
    volumes: ["{initdb}:/docker-entrypoint-initdb.d:ro"]
    healthcheck: {{interval: 2s, start_period: 60s}}
  master:
    environment:
      EASEML_LOCAL_POLL_INTERVAL: "2"
      EASEML_LOCAL_PROJECT: test/digits
    volumes: ["{repo}:/repo:ro"]
    healthcheck: {{interval: 2s, start_period: 120s}}
  worker:
    volumes: ["{repo}:/repo:ro"]
    healthcheck: {{interval: 2s, start_period: 60s}}
  master-2:
    environment:
      EASEML_LOCAL_POLL_INTERVAL: "2"
      EASEML_LOCAL_PROJECT: test/digits
    volumes: ["{repo}:/repo:ro"]
    healthcheck: {{interval: 2s, start_period: 120s}}
  worker-2:
    volumes: ["{repo}:/repo:ro"]
    healthcheck: {{interval: 2s, start_period: 60s}}
  crossbar:
    healthcheck: {{interval: 2s, start_period: 180s}}
"""


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}: {r.stderr[-2000:]}")
    return r


def image_label(image: str, label: str) -> str | None:
    r = docker("image", "inspect", "-f", f'{{{{index .Config.Labels "{label}"}}}}', image, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def ensure_standin(image: str, standin: str) -> None:
    """Build the stand-in for ``image`` (Docker's cache makes a rebuild cheap) unless an
    image of that name exists that is not ours (a real pull: then that one is used)."""
    label = image_label(image, STANDIN_LABEL)
    if label is not None and label != standin:
        return
    docker("build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", image,
           str(STANDINS / standin), timeout=900)
    assert image_label(image, STANDIN_LABEL) == standin


def remove_project(project: str) -> None:
    """Whatever of the compose project is left (by its label), should `down` have failed."""
    label = f"label=com.docker.compose.project={project}"
    for kind in ("container", "network", "volume"):
        ids = docker(kind, "ls", "-q", *(["-a"] if kind == "container" else []), "--filter", label,
                     check=False).stdout.split()
        if ids:
            docker(kind, "rm", *(["-f", "-v"] if kind == "container" else []), *ids, check=False)


class Stack:
    """One compose project in ``directory``; ``compose(...)`` runs the compose CLI on it."""

    def __init__(self, directory: Path, project: str, cmd: list[str], www: int):
        self.directory, self.project, self.cmd, self.www = directory, project, cmd, www

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*self.cmd, "--project-name", self.project, "--project-directory",
                            str(self.directory), *args], capture_output=True, text=True,
                           timeout=timeout, cwd=self.directory)
        if check and r.returncode != 0:
            raise AssertionError(f"compose {' '.join(args[:2])}: {r.stdout[-3000:]}{r.stderr[-3000:]}")
        return r

    def containers(self, service: str) -> list[str]:
        out = self.compose("ps", "-q", service).stdout.split()
        return out

    def api(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.www}/api/v2/{path}", timeout=20) as r:
            data = json.loads(r.read())
        return data[[k for k in data if k != "meta"][0]]

    def psql(self, sql: str) -> list[list[str]]:
        out = self.compose("exec", "-T", "postgres", "psql", "-U", "easeml", "-d", "easeml",
                           "-v", "ON_ERROR_STOP=1", "-tAF", "|", "-c", sql).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def master_log(self, service: str = "master") -> str:
        return self.compose("exec", "-T", service, "cat", "/var/lib/buildbot/twistd.log", check=False).stdout

    def cluster_state(self) -> str:
        """Buildbot's own view of who runs what: masters, the claims of change sources and
        schedulers, the changes seen and the requests made (what a stalled cluster lacks)."""
        queries = ["select id, name, active, last_active from masters order by id",
                   "select * from changesource_masters", "select * from scheduler_masters",
                   "select id, name from schedulers",
                   "select changeid, branch, revision, project from changes order by changeid",
                   "select r.id, r.buildsetid, r.complete, r.results, b.name from buildrequests r"
                   " join builders b on b.id = r.builderid order by r.id",
                   "select * from buildrequest_claims"]
        out = []
        for q in queries:
            r = self.compose("exec", "-T", "postgres", "psql", "-U", "easeml", "-d", "easeml",
                             "-tAF", "|", "-c", q, check=False)
            out.append(f"{q}:\n{r.stdout.strip()}{r.stderr.strip()}")
        return "\n".join(out)

    def diagnostics(self) -> str:
        ps = self.compose("ps", check=False).stdout
        logs = self.compose("logs", "--no-color", "--tail", "30", check=False).stdout
        quiet = ("GET /healthz", "processing changes", "disconnected before results")
        logs_of = {service: "\n".join(line for line in self.master_log(service).splitlines()
                                      if not any(q in line for q in quiet))[-5000:]
                   for service in ("master", "master-2")}
        told = "".join(f"\n--- {s} twistd.log (health and poll lines left out) ---\n{log}"
                       for s, log in logs_of.items())
        return f"{ps}\n{logs[-6000:]}\n--- {self.cluster_state()}{told}"


def wait_healthy(stack: Stack, service: str, count: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    states: list[str] = []
    while time.monotonic() < deadline:
        ids = stack.containers(service)
        states = [docker("inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                         c, check=False).stdout.strip() for c in ids]
        if len(ids) == count and all(s == "running healthy" for s in states):
            return ids
        time.sleep(2)
    raise AssertionError(f"{service}: {states}\n{stack.diagnostics()}")


def probe_during_init(stack: Stack) -> dict[str, int]:
    """Start PostgreSQL alone and, while its first-start initialisation runs (the slow init
    script on the image's socket-only temporary server), run compose's own healthcheck
    command in it: exit codes of that and of a TCP probe (which fails until the real server
    is up)."""
    stack.compose("up", "-d", "postgres")
    (pg,) = stack.containers("postgres")
    deadline = time.monotonic() + 60
    while "slow-init.sh" not in docker("logs", pg, check=False).stdout:
        assert time.monotonic() < deadline, stack.diagnostics()
        time.sleep(0.3)
    test = yaml.safe_load(stack.compose("config").stdout)["services"]["postgres"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    probe = docker("exec", pg, "sh", "-c", test[1].replace("$$", "$"), check=False).returncode
    tcp = docker("exec", pg, "pg_isready", "-q", "-h", "127.0.0.1", check=False).returncode
    return {"healthcheck": probe, "tcp": tcp}


@pytest.fixture(scope="module")
def stack():
    require_docker(BASE_IMAGE)
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no compose implementation (scripts/setup.sh installs Debian's docker-compose)")
    from easeml_buildbot.custody.keys import create_keypair
    from easeml_buildbot.demo.repo import DemoRepo

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    ensure_standin(POSTGRES_IMAGE, "postgres")
    timings["postgres stand-in"] = time.monotonic() - t0

    # Not under pytest's basetemp: concurrent pytest runs prune old basetemps, and the
    # containers bind-mount from here for the whole module.
    tmp = Path(tempfile.mkdtemp(prefix="easeml-stack-"))
    project_dir = build_context(tmp / "project")
    shutil.copy(ROOT / "docker-compose.yml", project_dir / "docker-compose.yml")
    keys = tmp / "keys"
    (keys / "master").mkdir(parents=True)
    pub, priv = create_keypair(keys / "worker", "easeml test service", "easeml-test@localhost", None)
    for d in (keys, keys / "master", keys / "worker"):
        os.chmod(d, 0o755)
    os.chmod(priv, 0o644)  # the worker container's root reads it; the directory is the test's own
    repo = DemoRepo(tmp / "repo", pub)
    repo.create()
    scratch = tmp / "scratch"
    scratch.mkdir()
    www, pb, metrics = free_port(), free_port(), free_port()
    (project_dir / ".env").write_text("\n".join([
        f"POSTGRES_PASSWORD={secrets.token_hex(16)}",
        f"EASEML_WORKER_PASSWORD={secrets.token_hex(16)}",
        "EASEML_FORGE=local", "EASEML_LOCAL_REPO=/repo", "EASEML_LOCAL_BRANCH=main",
        "EASEML_SMTP_ENABLED=false", "EASEML_WORKER_SLOTS=2",
        f"EASEML_WWW_PUBLISH=127.0.0.1:{www}", f"EASEML_WORKER_PUBLISH=127.0.0.1:{pb}",
        f"EASEML_METRICS_PUBLISH=127.0.0.1:{metrics}",
        f"EASEML_BUILDBOT_URL=http://127.0.0.1:{www}/",
        f"EASEML_KEYS_DIR={keys}", f"EASEML_SCRATCH_DIR={scratch}",
        f"EASEML_IMAGE_PREFIX={IMAGE_PREFIX}", f"EASEML_IMAGE_TAG={IMAGE_TAG}", ""]))
    initdb = tmp / "initdb"
    initdb.mkdir()
    (initdb / "slow-init.sh").write_text(f"sleep {SLOW_INIT}\n")
    (project_dir / "docker-compose.override.yml").write_text(OVERRIDE.format(repo=repo.path, initdb=initdb))
    st = Stack(project_dir, f"easemlstack{uuid.uuid4().hex[:8]}", cmd, www)
    st.repo, st.timings, st.scratch, st.metrics = repo, timings, scratch, metrics
    st.builds_seen = 0
    try:
        t0 = time.monotonic()
        st.compose("build", timeout=1500)
        timings["build master+worker"] = time.monotonic() - t0
        t0 = time.monotonic()
        st.init_probe = probe_during_init(st)
        up = st.compose("up", "-d", "--scale", "worker=2", timeout=600, check=False)
        assert up.returncode == 0, f"{up.stdout[-2000:]}{up.stderr[-2000:]}\n{st.diagnostics()}"
        wait_healthy(st, "worker", 2, 180)
        timings["up (healthy)"] = time.monotonic() - t0
        yield st
    finally:
        if not os.environ.get("EASEML_KEEP_CONTAINERS"):
            st.compose("--profile", "cluster", "down", "-v", "--remove-orphans", "--timeout", "10", check=False)
            remove_project(st.project)
            shutil.rmtree(tmp, ignore_errors=True)
        print("project:", st.project, st.directory, "timings:", {k: round(v, 1) for k, v in timings.items()})


def test_compose_file_is_the_operators(stack):
    assert (stack.directory / "docker-compose.yml").read_bytes() == (ROOT / "docker-compose.yml").read_bytes()
    cfg = stack.compose("config", "--services").stdout.split()
    assert {"postgres", "master", "worker"} <= set(cfg)


def test_services_start_in_order_without_crashing(stack):
    """`depends_on: service_healthy` holds the master until PostgreSQL takes connections
    over TCP: while the image initialises on its socket-only temporary server, the master
    must not start (it would fail to reach postgres:5432 and be restarted by the policy)."""
    for service in ("postgres", "master", "worker"):
        for c in stack.containers(service):
            restarts = docker("inspect", "-f", "{{.RestartCount}}", c).stdout.strip()
            assert restarts == "0", f"{service} restarted {restarts}x\n{stack.diagnostics()}"
    # While the image still initialised (its real server, the one on TCP, not up yet),
    # compose's healthcheck said "not yet".
    assert stack.init_probe["tcp"] != 0, stack.init_probe
    assert stack.init_probe["healthcheck"] != 0, "postgres reported healthy during its init phase"


def test_stack_evaluates_a_commit_and_spends_one_use(stack):
    from easeml_buildbot.demo.repo import COMMITS

    # All three services run from the images compose expects: the stand-in (or a real
    # postgres:15-bookworm) and the two built here.
    for service, image in (("postgres", POSTGRES_IMAGE), ("master", f"{IMAGE_PREFIX}/master:{IMAGE_TAG}"),
                           ("worker", f"{IMAGE_PREFIX}/worker:{IMAGE_TAG}")):
        for c in stack.containers(service):
            assert docker("inspect", "-f", "{{.Config.Image}}", c).stdout.strip() == image
    workers = sorted(w["name"] for w in stack.api("workers") if w["connected_to"])
    assert workers == ["worker-1", "worker-2"], stack.diagnostics()

    # Let the poller take the initial commit as its starting point, then commit a model.
    deadline = time.monotonic() + 60
    while "gitpoller: processing changes" not in stack.master_log():
        assert time.monotonic() < deadline, stack.diagnostics()
        time.sleep(1)
    t0 = time.monotonic()
    better = stack.repo.commit_model(COMMITS[0])
    deadline = time.monotonic() + 180
    builds: list = []
    while time.monotonic() < deadline:
        builds = [b for b in stack.api("builds") if b["complete"]]
        if builds:
            break
        time.sleep(2)
    stack.timings["commit -> verdict"] = time.monotonic() - t0
    assert len(builds) == 1, stack.diagnostics()
    stack.builds_seen = 1
    props = {k: v[0] for k, v in stack.api(f"builds/{builds[0]['buildid']}/properties")[0].items()}
    assert props["revision"] == better.sha
    assert props["easeml_status"] == "evaluated", (props.get("easeml_cause"), stack.diagnostics())
    assert props["easeml_verdict"] == "pass" and props["easeml_uses_left"] == 7

    # The ledger is the stack's PostgreSQL (shared with Buildbot's tables): one committed use.
    uses = stack.psql("select u.state, u.verdict, u.commit_sha, t.uses, t.budget from easeml_uses u "
                      "join easeml_testsets t on t.id = u.testset_id order by u.id")
    assert uses == [["committed", "pass", better.sha, "1", "8"]]
    tables = {r[0] for r in stack.psql("select tablename from pg_tables where schemaname = 'public'")}
    assert {"builds", "masters", "easeml_uses", "easeml_testsets"} <= tables
    # The features file went through the scratch directory (same path inside and out) and is gone.
    assert list(stack.scratch.iterdir()) == []
    # The operator's probe port answers on loopback: healthy, and the use is visible there.
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics}/healthz", timeout=10) as r:
        assert json.loads(r.read()) == {"master": "ok", "db": "ok", "ledger": "ok"}


def _has_multimaster_settings() -> bool:
    from easeml_buildbot.master.settings import Settings

    return {"mq_router_url", "mq_realm"} <= set(Settings.__dataclass_fields__)


@pytest.mark.skipif(not _has_multimaster_settings(),
                    reason="needs the multi-master settings mq_router_url / mq_realm (branch multimaster)")
def test_cluster_profile_adds_a_router_and_a_second_master(stack):
    """The running stack grows as docs/operator-guide.md says: EASEML_MQ_ROUTER_URL in .env,
    `--profile cluster up`: crossbar, master-2 and a worker on it join; the first master is
    recreated with the router. A new commit is then evaluated exactly once, one more use."""
    from easeml_buildbot.demo.repo import COMMITS

    assert stack.builds_seen == 1, "runs after test_stack_evaluates_a_commit_and_spends_one_use"
    www2, pb2, metrics2 = free_port(), free_port(), free_port()
    env = stack.directory / ".env"
    env.write_text(env.read_text() + "\n".join([
        "EASEML_MQ_ROUTER_URL=ws://crossbar:8080/ws",
        f"EASEML_MASTER2_WWW_PUBLISH=127.0.0.1:{www2}", f"EASEML_MASTER2_WORKER_PUBLISH=127.0.0.1:{pb2}",
        f"EASEML_MASTER2_METRICS_PUBLISH=127.0.0.1:{metrics2}", ""]))
    t0 = time.monotonic()
    stack.compose("--profile", "cluster", "build", "crossbar", timeout=1500)
    stack.timings["build crossbar"] = time.monotonic() - t0
    t0 = time.monotonic()
    up = stack.compose("--profile", "cluster", "up", "-d", "--scale", "worker=1", "--scale", "worker-2=1",
                       check=False)
    assert up.returncode == 0, f"{up.stdout[-2000:]}{up.stderr[-2000:]}\n{stack.diagnostics()}"
    for service in ("crossbar", "master", "master-2", "worker", "worker-2"):
        wait_healthy(stack, service, 1, 180)
    stack.timings["cluster up (healthy)"] = time.monotonic() - t0
    active = stack.psql("select name from masters where active = 1 order by id")
    assert len(active) == 2, (active, stack.diagnostics())
    deadline = time.monotonic() + 60
    while True:
        attached = {w["name"]: [m["masterid"] for m in w["connected_to"]] for w in stack.api("workers")}
        on = sorted(tuple(v) for v in attached.values() if v)
        if len(on) == 2:
            break
        assert time.monotonic() < deadline, (attached, stack.diagnostics())
        time.sleep(2)
    assert on[0] != on[1], f"both workers on one master: {attached}"  # one worker per master

    # Both masters see every build through the shared database and MQ.
    worse = stack.repo.commit_model(COMMITS[1])
    t0 = time.monotonic()
    deadline = time.monotonic() + 300
    while True:
        done = [b for b in stack.api("builds") if b["complete"]]
        if len(done) >= 2:
            break
        assert time.monotonic() < deadline, stack.diagnostics()
        time.sleep(2)
    stack.timings["cluster commit -> verdict"] = time.monotonic() - t0
    time.sleep(5)  # a duplicate evaluation by the other master would have been scheduled by now
    builds = stack.api("builds")
    with urllib.request.urlopen(f"http://127.0.0.1:{www2}/api/v2/builds", timeout=20) as r:
        via_m2 = json.loads(r.read())["builds"]
    assert [b["buildid"] for b in via_m2] == [b["buildid"] for b in builds]
    assert len(builds) == 2 and all(b["complete"] for b in builds), stack.diagnostics()
    props = {k: v[0] for k, v in stack.api(f"builds/{builds[1]['buildid']}/properties")[0].items()}
    assert props["revision"] == worse.sha and props["easeml_status"] == "evaluated"
    assert props["easeml_verdict"] == "fail" and props["easeml_uses_left"] == 6
    uses = stack.psql("select u.state, u.verdict, u.commit_sha from easeml_uses u order by u.id")
    assert [u[:2] for u in uses] == [["committed", "pass"], ["committed", "fail"]] and uses[1][2] == worse.sha
    assert stack.psql("select count(*) from buildrequests") == [["2"]]
