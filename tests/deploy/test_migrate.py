"""`easeml migrate`: a small ease.ml/ci repository, built here from scratch in the layout its
README and scripts document (first-release `.easeml.yml` with `dataMode`, headerless TSV test
set `data_test/test.txt.enc`, `easeml_sec.asc` holding both key blocks with a passphrase, a
script that hands `y_pred` to `libs/easeml.py`'s `eval_accuracy`), becomes one of ours and is
evaluated by `easeml worker evaluate` (process runner, and Docker) with the key taken from
base64."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.helpers import require_docker
from easeml_buildbot.cli import main as easeml
from easeml_buildbot.config import load_config
from easeml_buildbot.custody.dataset import encrypt_dataset
from easeml_buildbot.custody.keys import key_from_env
from support.gpgkeys import service_keys_with_passphrase  # noqa: F401 (fixture)

EASEML_YML = """ml:
- script : ./evaluate_model.py
- condition : n > 0.6 +/- 0.2
- reliability: 0.9
- mode : fp-free
- adaptivity : full
- steps : 2
- dataMode : local
- email: owner@example.com
"""

# an ease.ml/ci script: reads `inputPath + datasetName` (headerless TSV: id, a, b, label),
# needs a known label on each line (like the public example's encodedLabels), predicts one
# score per class and passes them to eval_accuracy
SCRIPT = '''#!/usr/bin/env python
import argparse
import csv
from libs.easeml import eval_accuracy

CLASSES = ["neg", "pos"]
parser = argparse.ArgumentParser()
parser.add_argument("datasetName")
parser.add_argument("inputPath")
args = parser.parse_args()
y_data, y_pred = [], []
with open(args.inputPath + args.datasetName) as fh:
    for row in csv.reader(fh, delimiter="\\t"):
        y_data.append(CLASSES.index(row[3]))
        a, b = float(row[1]), float(row[2])
        y_pred.append([0.2, 0.8] if a > b else [0.9, 0.1])
eval_accuracy(y_data, y_pred, None)
'''

# what ease.ml/ci's master injected before the build (it scores with keras: unusable here)
OLD_LIBS = "from keras import backend as K\n\ndef eval_accuracy(y_data, y_pred, func):\n    print(K)\n"

DOCKERFILE = """FROM easeml/python:bookworm
WORKDIR /app
COPY . /app
CMD ["python", "evaluate_model.py", "test.txt", "data_test/"]
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def easemlci_repo(tmp_path, service_keys_with_passphrase):
    keys = service_keys_with_passphrase
    repo = tmp_path / "easemlci"
    (repo / "data_test").mkdir(parents=True)
    (repo / "libs").mkdir()
    (repo / ".github/workflows").mkdir(parents=True)
    (repo / ".easeml.yml").write_text(EASEML_YML)
    (repo / "evaluate_model.py").write_text(SCRIPT)
    (repo / "libs/easeml.py").write_text(OLD_LIBS)
    (repo / "Dockerfile").write_text(DOCKERFILE)
    (repo / ".github/workflows/easemlci.yml").write_text("name: Easeml/CI\n")
    rng = random.Random(7)
    lines = []
    for i in range(300):
        a, b = round(rng.random(), 4), round(rng.random(), 4)
        label = "pos" if a > b else "neg"
        if rng.random() < 0.02:  # ~2% label noise: the used subset is a keyed draw of 26 rows, so
            # at 10% the model fell to <= 20/26 (fail) in ~4% of runs (CI saw it)
            label = "neg" if label == "pos" else "pos"
        lines.append(f"sample-{i:04d} secret-marker\t{a}\t{b}\t{label}\n")
    plain = tmp_path / "test.txt"
    plain.write_text("".join(lines))
    encrypt_dataset(keys.public, plain, repo / "data_test/test.txt.enc")
    plain.unlink()
    sec = tmp_path / "easeml_sec.asc"  # ease.ml/ci's easeml_create_key: public block, then private
    sec.write_bytes(keys.public.read_bytes() + keys.private.read_bytes())
    os.chmod(sec, 0o600)
    return repo, sec, keys


@pytest.mark.parametrize("runner", ["process", "docker"])
def test_migrated_repository_evaluates(easemlci_repo, tmp_path, capsys, runner):
    if runner == "docker":  # the generated Dockerfile, built and run in the real sandbox
        require_docker("easeml/python:bookworm")
    repo, sec, keys = easemlci_repo
    out = tmp_path / "migrated"
    rc = easeml(["migrate", str(repo), "--out", str(out), "--key", str(sec),
                 "--passphrase-file", str(keys.passphrase_file), "--classes", "neg,pos"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "300 rows x 4 fields (label: field 3)" in printed.out
    assert "left out: data_test/test.txt.enc" in printed.out

    cfg = load_config(out / ".easeml.yml")
    assert not cfg.legacy and cfg.condition_text == "n > 0.6 +/- 0.2" and cfg.steps == 2
    assert cfg.dataset == "data/test.csv.gpg" and cfg.label_column == "label"
    assert cfg.email == ("owner@example.com",) and cfg.required_samples().labels <= 300
    assert not (out / "data_test/test.txt.enc").exists() and not (out / ".github/workflows/easemlci.yml").exists()
    assert (out / "Dockerfile.easemlci").read_text() == DOCKERFILE
    assert "FROM easeml/python:bookworm" in (out / "Dockerfile").read_text()
    for p in out.rglob("*"):  # no plaintext of the test set anywhere in the copy
        if p.is_file():
            assert b"secret-marker" not in p.read_bytes(), p

    _git(out, "init", "-q", "-b", "main")
    _git(out, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", "-A")
    _git(out, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "migrated")
    sha = _git(out, "rev-parse", "HEAD")

    # the worker's key arrives as ease.ml/ci's GitHub secret did: base64 of easeml_sec.asc
    env = {"EASEML_WORKER_KEY_B64": base64.b64encode(sec.read_bytes()).decode()}
    key = key_from_env(env)
    try:
        result_path = tmp_path / "result.json"
        proc = subprocess.run(
            [sys.executable, "-m", "easeml_buildbot.cli", "worker", "evaluate", "--repo", str(out),
             "--head", sha, "--base", sha, "--key", str(key), "--passphrase-file", str(keys.passphrase_file),
             "--runner", runner, "--cache-dir", str(tmp_path / "cache"), "--out", str(result_path)],
            capture_output=True, text=True, timeout=300,
            env={k: v for k, v in os.environ.items() if not k.startswith("EASEML_")})
    finally:
        key.unlink()
        key.parent.rmdir()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(result_path.read_text())
    assert result["status"] == "scored", result
    assert result["verdict"]["outcome"] == "pass", result  # ~0.98 accuracy, checked against n > 0.6 +/- 0.2
    assert "secret-marker" not in proc.stdout + proc.stderr


def test_migrate_refuses_what_it_cannot_carry(easemlci_repo, tmp_path, capsys):
    repo, sec, keys = easemlci_repo
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    base = ["migrate", str(repo), "--key", str(sec), "--passphrase-file", str(keys.passphrase_file)]
    assert easeml([*base, "--out", str(tmp_path / "busy")]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert easeml([*base, "--out", str(tmp_path / "a"), "--label-index", "9"]) == 1
    assert "--label-index 9: the test set has 4 fields per line" in capsys.readouterr().err
    assert easeml(["migrate", str(repo), "--key", str(keys.public), "--out", str(tmp_path / "b")]) == 1
    assert "this is the public key" in capsys.readouterr().err
