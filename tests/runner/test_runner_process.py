"""ProcessRunner: the same contract as the Docker runner with a local subprocess (not a
sandbox, but a clean environment, no network via unshare, rlimits and a wall-time kill)."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

from easeml_buildbot.custody.dataset import decrypted_dataset
from easeml_buildbot.runner.base import Limits, ModelError
from easeml_buildbot.runner.process_runner import ProcessRunner, command_from_dockerfile, unshare_prefix
from runner_sandbox import PRELUDE, features_csv, model_dir

LIMITS = Limits(memory=1 << 30, timeout=30)


@pytest.fixture
def runner():
    return ProcessRunner()


def test_command_from_dockerfile():
    text = ("FROM builder AS b\nCMD [\"ignored\"]\nFROM easeml/python:bookworm\n# comment\n"
            "WORKDIR /app\nWORKDIR src\nCOPY . .\nCMD python3 \\\n    run.py --fast\n")
    assert command_from_dockerfile(text) == (["/bin/sh", "-c", "python3      run.py --fast"], "/app/src")
    text = 'FROM x\nENTRYPOINT ["python3", "/m/p.py"]\nCMD ["--x"]\n'
    assert command_from_dockerfile(text) == (["python3", "/m/p.py", "--x"], "/")
    assert command_from_dockerfile("FROM x\n") == ([], "/")


def test_real_model_from_its_dockerfile(runner, digits_repo, service_keys, tmp_path):
    # the Dockerfile says CMD ["python3", "/model/predict.py"] with WORKDIR /model
    with decrypted_dataset(digits_repo.path / digits_repo.dataset, service_keys.private, rows=200) as ds:
        digits_repo.checkout(digits_repo.base.sha)
        res = runner.predict(digits_repo.path, ds.features_path, tag="x", model={}, limits=LIMITS)
        used = ds.source_rows
    assert np.array_equal(res.predictions, digits_repo.base.predictions[used])
    assert "predict.py: 200 predictions" in res.log


def test_model_command_and_failures(runner, tmp_path):
    src = model_dir(tmp_path / "m", "write_predictions(7)\n")
    feats = features_csv(tmp_path / "f.csv")
    res = runner.predict(src, feats, model={"command": "python3 model.py"}, limits=LIMITS)
    assert res.predictions.tolist() == [7] * 20
    (src / "Dockerfile").unlink()
    with pytest.raises(ModelError) as err:
        runner.predict(src, feats, model={}, limits=LIMITS)
    assert err.value.cause == "dockerfile_missing"
    for script, cause in (("raise SystemExit(4)\n", "crash"),
                          ("write_predictions(1, n=3)\n", "wrong_count"),
                          ("write_predictions('1,2')\n", "unparsable"),
                          ("x = bytearray(10 * 2**30)\nwrite_predictions(1)\n", "oom")):
        (src / "model.py").write_text(PRELUDE + script)
        with pytest.raises(ModelError) as err:
            runner.predict(src, feats, model={"command": ["python3", "model.py"]}, limits=LIMITS)
        assert err.value.cause == cause, (script, err.value.log)


def test_environment_is_clean(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("EASEML_KEY_PASSPHRASE", "sentinel-passphrase-77")
    src = model_dir(tmp_path / "m", "import json\nprint('ENV', json.dumps(dict(os.environ)))\nwrite_predictions(0)\n")
    res = ProcessRunner().predict(src, features_csv(tmp_path / "f.csv"), model={"command": "python3 model.py"},
                                  limits=LIMITS)
    assert "sentinel-passphrase-77" not in res.log
    env = __import__("json").loads(res.log.split("ENV ")[1].splitlines()[0])
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE",
                        "EASEML_FEATURES", "EASEML_OUTPUT", "EASEML_ROWS"}
    assert os.path.basename(env["EASEML_FEATURES"]) == "features.csv"


def test_no_network_with_unshare(runner, tmp_path):
    if not unshare_prefix():
        pytest.skip("unshare -n is not available here (needs root or user namespaces)")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(1)
    port = srv.getsockname()[1]
    script = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
              "    print('CONNECTED')\nexcept OSError as e:\n    print('BLOCKED', e)\nwrite_predictions(0)\n")
    src = model_dir(tmp_path / "m", script)
    res = runner.predict(src, features_csv(tmp_path / "f.csv"), model={"command": "python3 model.py"},
                         limits=LIMITS)
    with pytest.raises(socket.timeout):
        srv.accept()
    srv.close()
    assert "BLOCKED" in res.log and "CONNECTED" not in res.log


def test_timeout_kills_the_whole_process_group(runner, tmp_path):
    script = ("import subprocess, time\np = subprocess.Popen(['sleep', '1000'])\n"
              "print('CHILD', p.pid, flush=True)\ntime.sleep(1000)\n")
    src = model_dir(tmp_path / "m", script)
    t0 = time.monotonic()
    with pytest.raises(ModelError) as err:
        runner.predict(src, features_csv(tmp_path / "f.csv"), model={"command": "python3 model.py"},
                       limits=Limits(timeout=2))
    assert err.value.cause == "timeout"
    assert time.monotonic() - t0 < 15
    child = int(err.value.log.split("CHILD ")[1].split()[0])
    time.sleep(0.2)
    alive = os.path.exists(f"/proc/{child}") and "zombie" not in open(f"/proc/{child}/status").read()
    assert not alive, "the model's child process survived the kill"
