"""Hostile models in the Docker sandbox: each attack is contained and reported, and no label
or key is ever within the model's reach (checked with unguessable marker labels)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from easeml_buildbot.custody.dataset import decrypted_dataset
from easeml_buildbot.runner.base import Limits, ModelError
from easeml_buildbot.runner.docker_runner import DockerRunner
from runner_sandbox import features_csv, model_dir

pytestmark = pytest.mark.docker

LIMITS = Limits(memory=256 << 20, timeout=60, build_timeout=120, pids=48)


@pytest.fixture(scope="module")
def runner(docker_client):
    return DockerRunner(docker_client)


@pytest.fixture
def listener(docker_client):
    """A TCP server the model would reach over Docker's bridge if it had a network."""
    bridge = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    gateway = bridge.get("Gateway") or "172.17.0.1"
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    accepted: list[tuple] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
                accepted.append(addr)
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield gateway, srv.getsockname()[1], accepted
    stop.set()
    t.join(2)
    srv.close()


def test_network_connection_is_impossible(runner, docker_client, listener, tmp_path, tag):
    gateway, port, accepted = listener
    script = f'''
import socket
for host in ("{gateway}", "127.0.0.1", "deb.debian.org", "8.8.8.8"):
    try:
        socket.create_connection((host, {port} if host[0].isdigit() else 80), timeout=3).close()
        print("CONNECTED", host)
    except OSError as e:
        print("BLOCKED", host, type(e).__name__)
write_predictions(0)
'''
    # control: the same probe over Docker's default bridge does reach the listener
    control = docker_client.containers.run("easeml/python:bookworm", [
        "python3", "-c", f"import socket; socket.create_connection(('{gateway}', {port}), timeout=5); print('ok')"],
        remove=True)
    assert b"ok" in control
    deadline = time.monotonic() + 2
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert accepted, "control connection over the bridge did not arrive"
    accepted.clear()

    src = model_dir(tmp_path / "m", script)
    res = runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={}, limits=LIMITS)
    time.sleep(0.5)
    assert accepted == [], "the sandboxed model reached the host"
    assert "CONNECTED" not in res.log
    for host in (gateway, "127.0.0.1", "deb.debian.org", "8.8.8.8"):
        assert f"BLOCKED {host}" in res.log


def test_sees_nothing_of_the_test_set_but_features(runner, service_keys, marker_test_set,
                                                   marker_labels, tmp_path, tag):
    script = r'''
import os
print("EASEML_TREE", sorted(os.path.join(d, f) for d, _, fs in os.walk("/easeml") for f in fs + _))
for line in open("/proc/self/mountinfo"):
    if "/easeml" in line:
        print("MOUNT", line.split()[4], line.split()[5].split(",")[0])
# stored reversed so that this script (and so the image) does not contain them itself
needles = tuple(n[::-1].encode() for n in NEEDLES_REVERSED)
hits, files = [], 0
for d, dirs, fs in os.walk("/"):
    if d.startswith(("/proc", "/sys", "/dev")):
        dirs[:] = []
        continue
    for f in fs:
        p = os.path.join(d, f)
        try:
            if os.path.islink(p) or os.path.getsize(p) > 4 << 20:
                continue
            data = open(p, "rb").read()
        except OSError:
            continue
        files += 1
        if any(n in data for n in needles):
            hits.append(p)
print("SCANNED", files, "HITS", hits)
feats = open(os.environ["EASEML_FEATURES"]).read()
print("HEADER", feats.splitlines()[0])
write_predictions("guess")
'''
    # a piece of the private key's body: no file the model can read may contain it
    body = [ln for ln in service_keys.private.read_text().splitlines()
            if ln and not ln.startswith("-----") and ":" not in ln]
    key_chunk = body[len(body) // 2][:32]
    needles = ["secret-label-"[::-1], key_chunk[::-1]]
    src = model_dir(tmp_path / "m", f"NEEDLES_REVERSED = {needles!r}\n" + script)
    with decrypted_dataset(marker_test_set, service_keys.private) as ds:
        res = runner.predict(src, ds.features_path, tag=tag, model={}, limits=LIMITS)
    log = res.log
    assert key_chunk not in log
    assert "EASEML_TREE ['/easeml/input/features.csv', '/easeml/output/predictions.csv', " \
           "'/easeml/input', '/easeml/output']" in log or \
           "EASEML_TREE ['/easeml/input', '/easeml/input/features.csv', '/easeml/output'" in log, log
    assert "MOUNT /easeml/input/features.csv ro" in log
    assert "MOUNT /easeml/output rw" in log
    assert log.count("MOUNT ") == 2
    scanned = int(log.split("SCANNED ")[1].split()[0])
    assert scanned > 1000, "the scan did not run over the image"
    assert "HITS []" in log
    assert "HEADER x0,x1,x2" in log  # the label column is gone
    for label in marker_labels:
        assert label not in log
    assert str(service_keys.private) not in log

    # control: had a label or the key been in reach, the same scan would have found it
    leaky = tmp_path / "leaky.csv"
    leaky.write_text(f"x0,x1,x2\n1,2,{marker_labels[0]}\n3,4,{key_chunk}\n")
    control = runner.predict(src, leaky, tag=tag, model={}, limits=LIMITS)
    assert "HITS ['/easeml/input/features.csv']" in control.log


def test_cannot_write_outside_output(runner, tmp_path, tag):
    script = '''
for path in ("/evil", "/model/evil", "/etc/passwd", "/easeml/input/features.csv",
             "/easeml/input/evil", "/easeml/evil", "/var/tmp/evil", "/root/evil"):
    try:
        with open(path, "a") as f:
            f.write("x")
        print("WROTE", path)
    except OSError as e:
        print("DENIED", path, e.strerror)
open("/tmp/ok", "w").write("scratch")
write_predictions(3)
'''
    src = model_dir(tmp_path / "m", script)
    feats = features_csv(tmp_path / "f.csv")
    before = feats.read_bytes()
    res = runner.predict(src, feats, tag=tag, model={}, limits=LIMITS)
    assert "WROTE" not in res.log
    assert res.log.count("DENIED ") == 8
    assert "Read-only file system" in res.log
    assert feats.read_bytes() == before
    assert res.predictions.tolist() == [3] * 20


def test_fork_bomb_hits_the_pid_limit(runner, tmp_path, tag):
    script = '''
import time, signal
children = []
try:
    while len(children) < 10000:
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        children.append(pid)
    print("FORKS UNLIMITED", len(children))
except OSError as e:
    print("FORK LIMIT AFTER", len(children), type(e).__name__)
for pid in children:
    os.kill(pid, signal.SIGKILL)
write_predictions(1)
'''
    src = model_dir(tmp_path / "m", script)
    # enough memory for the copy-on-write children, so that only the pid limit can stop them
    limits = Limits(memory=1 << 30, timeout=120, pids=LIMITS.pids)
    try:
        res = runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={}, limits=limits)
    except ModelError as exc:
        pytest.fail(f"{exc.cause}: {exc.message}\n{exc.log[-2000:]}")
    assert "FORKS UNLIMITED" not in res.log
    n = int(res.log.split("FORK LIMIT AFTER ")[1].split()[0])
    assert 0 < n < LIMITS.pids


def test_fork_bomb_that_never_stops_is_killed(runner, tmp_path, tag):
    dockerfile = "FROM easeml/busybox\nCMD [\"/bin/sh\", \"-c\", \"b() { b | b & }; b; sleep 1000\"]\n"
    src = model_dir(tmp_path / "m", "", dockerfile=dockerfile)
    t0 = time.monotonic()
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                       limits=Limits(pids=32, timeout=4))
    assert err.value.cause in ("timeout", "crash")
    assert time.monotonic() - t0 < 40


def test_allocating_10gb_is_oom(runner, tmp_path, tag):
    script = 'print("allocating", flush=True)\nx = bytearray(10 * 2**30)\nprint("ALLOCATED")\nwrite_predictions(1)\n'
    src = model_dir(tmp_path / "m", script)
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                       limits=Limits(memory=128 << 20, timeout=60))
    assert err.value.cause == "oom", err.value.log
    assert "128 MiB" in err.value.message
    assert "ALLOCATED" not in err.value.log


def test_sleeping_forever_is_killed(runner, tmp_path, tag):
    src = model_dir(tmp_path / "m", 'print("sleeping", flush=True)\nimport time\ntime.sleep(10**6)\n')
    t0 = time.monotonic()
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                       limits=Limits(timeout=3))
    elapsed = time.monotonic() - t0
    assert err.value.cause == "timeout"
    assert "3s" in err.value.message
    assert "sleeping" in err.value.log
    assert elapsed < 30


def test_environment_holds_no_secrets(runner, service_keys, marker_test_set, marker_labels,
                                      tmp_path, tag, monkeypatch):
    monkeypatch.setenv("EASEML_KEY_PASSPHRASE", "sentinel-passphrase-4f1c")
    monkeypatch.setenv("GITHUB_TOKEN", "sentinel-token-93ab")
    script = '''
import json
print("ENV", json.dumps(dict(os.environ), sort_keys=True))
for pid in ("1", "self"):
    try:
        print("PROC", pid, open(f"/proc/{pid}/environ", "rb").read().replace(b"\\0", b" ").decode())
    except OSError as e:
        print("PROC", pid, "unreadable", e.strerror)
write_predictions("x")
'''
    src = model_dir(tmp_path / "m", script)
    with decrypted_dataset(marker_test_set, service_keys.private) as ds:
        res = runner.predict(src, ds.features_path, tag=tag, model={}, limits=LIMITS)
    import json

    env = json.loads(res.log.split("ENV ")[1].splitlines()[0])
    allowed = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "HOSTNAME",
               "EASEML_FEATURES", "EASEML_OUTPUT", "EASEML_ROWS"}
    assert set(env) <= allowed, set(env) - allowed
    assert env["EASEML_FEATURES"] == "/easeml/input/features.csv"
    assert env["EASEML_OUTPUT"] == "/easeml/output"
    assert env["EASEML_ROWS"] == "40"
    for secret in ("sentinel-passphrase-4f1c", "sentinel-token-93ab", str(service_keys.private),
                   *marker_labels):
        assert secret not in res.log


def test_containers_past_their_deadline_are_reaped(runner, docker_client, tag):
    """A worker killed with SIGKILL leaves its container; the next run removes it."""
    from easeml_buildbot.runner.docker_runner import DEADLINE_LABEL, LABEL, TAG_LABEL

    past = docker_client.containers.run(
        "easeml/busybox", ["sleep", "1000"], detach=True,
        labels={LABEL: "model", TAG_LABEL: tag, DEADLINE_LABEL: str(int(time.time()) - 5)})
    future = docker_client.containers.run(
        "easeml/busybox", ["sleep", "1000"], detach=True,
        labels={LABEL: "model", TAG_LABEL: tag + "-f", DEADLINE_LABEL: str(int(time.time()) + 3600)})
    try:
        removed = runner.reap_stale()
        assert past.id in removed and future.id not in removed
        future.reload()
        assert future.status == "running"
    finally:
        future.remove(force=True)


# ---------------------------------------------------------------- uid 0 through the back door

ROOT_ALIAS = "RUN echo 'toor:x:0:0:root alias:/root:/bin/sh' >> /etc/passwd && " \
             "echo 'wheel2:x:0:' >> /etc/group\n"
ID_CMD = ('CMD ["/bin/sh", "-c", "echo ID $(id -u) $(id -g) G $(id -G); '
          'printf \'prediction\\\\n\' > $EASEML_OUTPUT/predictions.csv; '
          'i=0; while [ $i -lt $EASEML_ROWS ]; do echo 1 >> $EASEML_OUTPUT/predictions.csv; i=$((i+1)); done"]\n')


@pytest.mark.parametrize("user", ["00", "0:0", "toor", "toor:wheel2", "root:0", "0:4242"])
def test_root_in_any_spelling_runs_as_the_operator_user(runner, tmp_path, tag, user):
    dockerfile = f"FROM easeml/busybox\n{ROOT_ALIAS}USER {user}\n{ID_CMD}"
    src = model_dir(tmp_path / "m", "", dockerfile=dockerfile)
    res = runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                         limits=Limits(timeout=60, user="4343:4343"))
    assert "ID 4343 4343 G 4343\n" in res.log, res.log[-500:]


def test_named_non_root_user_is_resolved_without_root_groups(runner, tmp_path, tag):
    """A named user in the image runs as its numeric uid:gid; a gid of 0 (directly or as a
    supplementary group in the image's /etc/group) is never kept."""
    dockerfile = ("FROM easeml/busybox\n"
                  "RUN echo 'dev:x:4242:0:dev:/tmp:/bin/sh' >> /etc/passwd && "
                  "sed -i 's/^root:x:0:.*/&,dev/' /etc/group\n"
                  f"USER dev\n{ID_CMD}")
    src = model_dir(tmp_path / "m", "", dockerfile=dockerfile)
    res = runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                         limits=Limits(timeout=60, user="4343:4343"))
    assert "ID 4242 4343 G 4343\n" in res.log, res.log[-500:]


def test_resolve_user_reads_the_images_files():
    from easeml_buildbot.runner.docker_runner import resolve_user

    passwd = b"root:x:0:0::/root:/bin/sh\ntoor:x:0:0::/:/bin/sh\ndev:x:1000:1001::/:/bin/sh\n"
    group = b"root:x:0:\nstaff:x:50:dev\n"
    assert resolve_user("toor", "", passwd, group) == (0, 0)
    assert resolve_user("00", "", passwd, group) == (0, 0)
    assert resolve_user("dev", "", passwd, group) == (1000, 1001)
    assert resolve_user("dev", "staff", passwd, group) == (1000, 50)
    assert resolve_user("1000", "", passwd, group) == (1000, 1001)
    assert resolve_user("77", "", passwd, group) == (77, 77)
    assert resolve_user("ghost", "", passwd, group) == (None, None)
    assert resolve_user("dev", "nogroup", passwd, group) == (1000, None)


def test_operator_user_must_be_numeric_and_not_root():
    for bad in ("root", "0", "0:0", "1000:0", "nobody"):
        with pytest.raises(ValueError):
            Limits.from_env({"EASEML_RUN_USER": bad})
    assert Limits.from_env({"EASEML_RUN_USER": "1000"}).user == "1000:1000"


# ------------------------------------------------------- output limit is hard, not after the fact

def test_many_files_are_stopped_at_the_output_limit(runner, tmp_path, tag):
    script = '''
written = 0
try:
    for i in range(64):
        with open(os.path.join(os.environ["EASEML_OUTPUT"], f"blob{i}"), "wb") as f:
            f.write(b"x" * (1 << 20))
        written += 1 << 20
    print("WROTE ALL", written, flush=True)
except OSError as e:
    print("STOPPED AT", written, e.strerror, flush=True)
    raise
write_predictions(0)
'''
    src = model_dir(tmp_path / "m", script)
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                       limits=Limits(output=8 << 20, timeout=60))
    assert err.value.cause == "output_too_large", err.value.log[-1000:]
    assert "WROTE ALL" not in err.value.log
    stopped = int(err.value.log.split("STOPPED AT ")[1].split()[0])
    assert stopped <= 8 << 20
    assert err.value.spent
