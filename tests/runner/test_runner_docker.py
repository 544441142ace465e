"""DockerRunner against the real daemon: a trained model scores a real encrypted test set,
and every failure a model can cause ends as a ModelError naming its cause."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from easeml_buildbot.custody.dataset import decrypted_dataset
from easeml_buildbot.runner.base import Limits, ModelError
from easeml_buildbot.runner.docker_runner import DockerRunner
from runner_sandbox import features_csv, model_dir

pytestmark = pytest.mark.docker

FAST = Limits(memory=256 << 20, timeout=60, build_timeout=120, pids=64)


@pytest.fixture(scope="module")
def runner(docker_client):
    return DockerRunner(docker_client)


def _checkout(repo, sha, dest):
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(repo.path), "archive", sha], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def test_trained_model_scores_encrypted_test_set(runner, digits_repo, service_keys, tmp_path, tag):
    src = _checkout(digits_repo, digits_repo.base.sha, tmp_path / "src")
    with decrypted_dataset(digits_repo.path / digits_repo.dataset, service_keys.private, rows=300) as ds:
        res = runner.predict(src, ds.features_path, tag=tag, model={}, limits=FAST)
        labels, used = ds.labels, ds.source_rows
    assert res.predictions.shape == (300,)
    # exactly what the committed weights predict, row for row (in the service's row order)
    assert np.array_equal(res.predictions, digits_repo.base.predictions[used])
    acc = float(np.mean(res.predictions == labels))
    assert acc == pytest.approx(digits_repo.base.accuracy_on(labels, used))
    assert 0.7 < acc < 0.9
    assert set(res.timings) >= {"build", "run", "parse"}
    assert "Successfully built" in res.log and "predict.py: 300 predictions" in res.log


def test_runs_unprivileged_readonly_offline(runner, tmp_path, tag):
    script = '''
import socket
status = open("/proc/self/status").read()
fields = dict(l.split(":\\t", 1) for l in status.splitlines() if ":\\t" in l)
print("UID", os.getuid(), os.getgid())
print("CAPEFF", fields["CapEff"].strip(), "NONEWPRIVS", fields["NoNewPrivs"].strip())
print("IFACES", sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
for path in ("/", "/model", "/etc", "/easeml/input", "/easeml"):
    try:
        open(os.path.join(path, "x"), "w").write("x")
        print("WROTE", path)
    except OSError as e:
        print("DENIED", path, e.strerror)
open("/tmp/scratch", "w").write("x" * 1000)
print("TMP OK")
write_predictions(1)
'''
    src = model_dir(tmp_path / "m", script)
    res = runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={}, limits=FAST)
    assert res.predictions.tolist() == [1] * 20
    assert "UID 65534 65534" in res.log
    assert "CAPEFF 0000000000000000 NONEWPRIVS 1" in res.log
    assert "IFACES ['lo']" in res.log
    assert "WROTE" not in res.log
    for path in ("/", "/model", "/etc", "/easeml/input", "/easeml"):
        assert f"DENIED {path} " in res.log
    assert "TMP OK" in res.log


def test_more_cpus_than_the_host_means_all(runner, tmp_path, tag):
    src = model_dir(tmp_path / "m", "write_predictions(0)\n")
    res = runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                         limits=Limits(cpus=512, timeout=60))
    assert res.predictions.tolist() == [0] * 20


def test_image_user_is_respected(runner, tmp_path, tag):
    dockerfile = ("FROM easeml/python:bookworm\nCOPY model.py /model.py\nUSER 4242:4242\n"
                  'CMD ["python3", "/model.py"]\n')
    src = model_dir(tmp_path / "m", 'print("UID", os.getuid())\nwrite_predictions(0)\n', dockerfile=dockerfile)
    res = runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={}, limits=FAST)
    assert "UID 4242" in res.log


def test_dockerfile_missing(runner, tmp_path, tag):
    src = tmp_path / "m"
    src.mkdir()
    (src / "predict.py").write_text("print(1)\n")
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={}, limits=FAST)
    assert err.value.cause == "dockerfile_missing" and "Dockerfile" in err.value.message
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "g.csv"), tag=tag, model={"dockerfile": "../Dockerfile"},
                       limits=FAST)
    assert err.value.cause == "bad_model_config"


def test_configured_dockerfile_path(runner, tmp_path, tag):
    src = model_dir(tmp_path / "m", "write_predictions(5)\n")
    (src / "docker").mkdir()
    (src / "Dockerfile").rename(src / "docker" / "Model.dockerfile")
    res = runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag,
                         model={"dockerfile": "docker/Model.dockerfile"}, limits=FAST)
    assert res.predictions.tolist() == [5] * 20


@pytest.mark.parametrize("dockerfile,fragment", [
    ("FROM easeml/python:bookworm\nRUN exit 3\n", "returned a non-zero code: 3"),
    ("FROM easeml/python:bookworm\nFORM nothing\n", "unknown instruction"),
    ("FROM easeml/no-such-image:1\nCMD true\n", "no-such-image"),
])
def test_broken_dockerfile(runner, tmp_path, dockerfile, fragment, tag):
    src = model_dir(tmp_path / "m", "write_predictions(1)\n", dockerfile=dockerfile)
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={}, limits=FAST)
    assert err.value.cause == "build_failed"
    assert fragment.lower() in err.value.message.lower()
    assert "--- build ---" in err.value.log


def test_build_timeout_stops_the_build(runner, docker_client, tmp_path, tag):
    src = model_dir(tmp_path / "m", "", dockerfile="FROM easeml/busybox\nRUN sleep 600\n")
    t0 = time.monotonic()
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                       limits=Limits(build_timeout=3))
    assert err.value.cause == "build_timeout"
    assert time.monotonic() - t0 < 40
    left = [c for c in docker_client.containers.list(all=True) if "sleep 600" in " ".join(c.attrs["Config"]["Cmd"] or [])]
    assert not left, "the build step's container still exists"


def test_build_context_never_holds_the_test_set(runner, digits_repo, tmp_path, tag):
    # no .dockerignore at all: the runner's own exclusions must still keep .git and *.gpg out
    src = _checkout(digits_repo, digits_repo.base.sha, tmp_path / "src")
    (src / ".dockerignore").unlink()
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / "secret.pgp").write_text("x")
    (src / "Dockerfile").write_text("FROM easeml/busybox\nCOPY . /ctx\nRUN find /ctx | sort\nCMD true\n")
    logs = []
    for exclude in (["data/test.csv.gpg"], []):
        with pytest.raises(ModelError) as err:  # `true` writes no predictions; we want the build log
            runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={}, limits=FAST,
                           exclude=exclude)
        assert err.value.cause == "no_predictions"
        logs.append(err.value.log.split("--- run ---")[0])
    build_log = logs[0]
    assert "/ctx/predict.py" in build_log and "/ctx/model/weights.npz" in build_log
    for leaked in ("/ctx/.git", ".gpg", "secret.pgp"):
        assert leaked not in build_log
    # *.gpg is excluded either way: the same context, so the same cache key
    tagged = [lg.split("Successfully tagged ")[1].split()[0] for lg in logs]
    assert tagged[0] == tagged[1]


@pytest.mark.parametrize("script,cause,fragment", [
    ("write_predictions(1, n=int(os.environ['EASEML_ROWS']) - 1)\n", "wrong_count", "19 predictions for 20"),
    ("open(os.environ['EASEML_OUTPUT'] + '/predictions.csv', 'w').write('a,b\\nc\\n')\n", "unparsable", "line 1"),
    ("print('about to fail'); raise SystemExit(3)\n", "crash", "code 3"),
    ("raise RuntimeError('model bug')\n", "crash", "code 1"),
    ("print('done, forgot to write')\n", "no_predictions", "no predictions"),
])
def test_model_failures(runner, tmp_path, script, cause, fragment, tag):
    src = model_dir(tmp_path / "m", script)
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={}, limits=FAST)
    assert err.value.cause == cause, err.value.log
    assert fragment in err.value.message
    if cause == "crash" and "RuntimeError" in script:
        assert "RuntimeError: model bug" in err.value.log  # the traceback reaches the build log


def test_output_too_large(runner, tmp_path, tag):
    script = ("with open(os.environ['EASEML_OUTPUT'] + '/big.bin', 'wb') as f:\n"
              "    for _ in range(64): f.write(b'0' * (1 << 20))\nwrite_predictions(1)\n")
    src = model_dir(tmp_path / "m", script)
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                       limits=Limits(output=8 << 20, timeout=60))
    assert err.value.cause == "output_too_large"


def test_run_log_is_bounded(runner, tmp_path, tag):
    src = model_dir(tmp_path / "m", "for i in range(200000): print('noise', i)\nwrite_predictions(2)\n")
    res = runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={},
                         limits=Limits(log_bytes=4096, timeout=60))
    run_log = res.log.split("--- run ---")[1]
    assert len(run_log) < 4096 + 200
    assert "noise 0\n" in run_log and "noise 199999" in run_log and "characters cut" in run_log


@pytest.mark.parametrize("cmd,fragment", [
    ('CMD ["/no/such/program"]', "code 127 (command not found)"),
    ('USER nosuchuser\nCMD ["python3", "-c", "1"]', "did not start"),
])
def test_command_that_cannot_start_is_a_model_error(runner, tmp_path, cmd, fragment, tag):
    src = model_dir(tmp_path / "m", "", dockerfile=f"FROM easeml/python:bookworm\n{cmd}\n")
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), tag=tag, model={}, limits=FAST)
    assert err.value.cause == "crash" and fragment in err.value.message


@pytest.mark.parametrize("fmt,out", [("jsonl", "npy"), ("npz", "jsonl"), ("csv", "npz")])
def test_feature_and_prediction_formats(runner, service_keys, tmp_path, fmt, out, tag):
    from support.gpgkeys import encrypted_test_set

    x = np.arange(30, dtype=float).reshape(10, 3)
    y = (x[:, 0] % 2).astype(int)
    enc = encrypted_test_set(service_keys, tmp_path / f"t.{fmt}.gpg", x, y)
    script = '''
import json
import numpy as np
path = os.environ["EASEML_FEATURES"]
print("FEATURES", path)
if path.endswith(".jsonl"):
    x = np.array([list(json.loads(l).values()) for l in open(path)])
elif path.endswith(".npz"):
    x = np.load(path)["X"]
else:
    x = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
pred = np.mod(x[:, 0], 2).astype(int)
out = os.environ["EASEML_OUTPUT"]
fmt = "OUTFMT"
if fmt == "npy":
    np.save(out + "/predictions.npy", pred)
elif fmt == "npz":
    np.savez(out + "/predictions.npz", predictions=pred)
else:
    open(out + "/predictions.jsonl", "w").write("".join(json.dumps({"prediction": int(p)}) + "\\n" for p in pred))
'''.replace("OUTFMT", out)
    src = model_dir(tmp_path / "m", script)
    with decrypted_dataset(enc, service_keys.private) as ds:
        res = runner.predict(src, ds.features_path, tag=tag, model={}, limits=FAST)
        assert np.array_equal(res.predictions, ds.labels)
    assert f"FEATURES /easeml/input/features.{fmt}" in res.log


# The race of two builds sharing a Dockerfile prefix (why builds once ran with nocache) is
# tested with the cache on in test_runner_build.py::test_concurrent_builds_share_layers_and_prune_waits.
