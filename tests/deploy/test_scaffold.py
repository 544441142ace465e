"""`easeml init` and `easeml run-local`: a scaffolded repository passes check-config, its
model runs under the ProcessRunner (and Docker), and --existing never touches a file."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from deploy.helpers import BASE_IMAGE, require_docker
from easeml_buildbot.cli import main as easeml
from easeml_buildbot.config import load_config
from easeml_buildbot.scaffold import TEMPLATE_FILES, scaffold
from easeml_buildbot.scaffold.local import LocalRunError, run_local


def tree_digest(root: Path) -> dict[str, tuple[str, int, int]]:
    """path -> (sha256, mode, mtime_ns) of every file under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode, st.st_mtime_ns)
    return out


def write_dev_csv(path: Path, x: np.ndarray, y: np.ndarray | None) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"px{i}" for i in range(x.shape[1])] + (["label"] if y is not None else []))
        for i, row in enumerate(x):
            w.writerow([int(v) for v in row] + ([int(y[i])] if y is not None else []))
    return path


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data, d.target


def test_init_writes_every_template_and_check_config_accepts_it(tmp_path, capsys):
    repo = tmp_path / "model-repo"
    assert easeml(["init", str(repo)]) == 0
    for target in TEMPLATE_FILES:
        assert (repo / target).is_file(), target
    assert os.access(repo / "predict.py", os.X_OK)
    assert "FROM easeml/python:bookworm" in (repo / "Dockerfile").read_text()
    readme = (repo / "README.md").read_text()
    assert "## The test set" in readme and "Rotating the test set" in readme and "model-repo" in readme
    capsys.readouterr()
    assert easeml(["check-config", str(repo / ".easeml.yml")]) == 0
    summary = capsys.readouterr().out
    assert "labelled test samples" in summary
    cfg = load_config(repo / ".easeml.yml")
    # The comment in the template states the sample size; keep it true.
    needed = cfg.required_samples().labels
    assert f"needs {needed} labelled test samples" in (repo / ".easeml.yml").read_text()
    assert cfg.dataset == "data/test.csv.gpg" and cfg.model.get("dockerfile") == "Dockerfile"


def test_scaffolded_model_runs_under_the_process_runner(tmp_path, digits, capsys):
    x, y = digits
    repo = tmp_path / "repo"
    scaffold(repo)
    dev = write_dev_csv(tmp_path / "dev.csv", x[1000:1300], y[1000:1300])

    # Out of the box (no weights): one constant prediction per row.
    report = run_local(repo_dir=repo, features=dev)
    assert report.ok and report.n_rows == 300
    assert set(report.predictions.tolist()) == {0}
    assert report.accuracy == pytest.approx(float(np.mean(y[1000:1300] == 0)))

    # train.py fits on a dev set; predict.py then applies the weights with numpy alone. The
    # label column is removed before the model sees the file (64 weights, 65 columns).
    train = write_dev_csv(tmp_path / "train.csv", x[:800], y[:800])
    subprocess.run([sys.executable, str(repo / "train.py"), str(train)], check=True,
                   capture_output=True, cwd=repo)
    assert easeml(["run-local", "--dir", str(repo), "--features", str(dev)]) == 0
    out = capsys.readouterr().out
    assert "runner: process" in out and "predictions: 300 for 300 rows" in out
    acc = float(out.split("accuracy on the dev set (column 'label'): ")[1].split()[0])
    assert acc > 0.85

    # Labels from a separate file give the same accuracy as the column.
    unlabeled = write_dev_csv(tmp_path / "x.csv", x[1000:1300], None)
    labels = tmp_path / "y.txt"
    labels.write_text("\n".join(str(v) for v in y[1000:1300]) + "\n")
    report = run_local(repo_dir=repo, features=unlabeled, labels=labels)
    assert report.accuracy == pytest.approx(acc, abs=1e-4)


def test_run_local_reports_a_broken_model_with_its_cause(tmp_path, digits, capsys):
    x, y = digits
    repo = tmp_path / "repo"
    scaffold(repo)
    (repo / "predict.py").write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    dev = write_dev_csv(tmp_path / "dev.csv", x[:20], y[:20])
    assert easeml(["run-local", "--dir", str(repo), "--features", str(dev)]) == 1
    out = capsys.readouterr().out
    assert "model error: crash" in out and "about to fail" in out

    assert easeml(["run-local", "--dir", str(tmp_path / "nowhere"), "--features", str(dev)]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_existing_adds_only_missing_files_and_leaves_the_rest_byte_identical(tmp_path):
    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)
    mine = {
        ".easeml.yml": "condition: n > 0.5 +/- 0.1\nsteps: 4\n",
        "Dockerfile": "FROM easeml/python:bookworm\nCMD [\"python3\", \"serve.py\"]\n",
        "README.md": "# my model\n\nno test-set section here\n",
        "predict.py": "print('my own model')\n",
        "model/default_class.txt": "7\n",
    }
    for name, text in mine.items():
        (repo / name).write_text(text)
    os.chmod(repo / "predict.py", 0o600)
    before = tree_digest(repo)

    result = scaffold(repo, existing=True)

    after = tree_digest(repo)
    for name in mine:
        assert after[name] == before[name], f"{name} changed"
    assert set(result.kept) == set(mine)
    missing = set(TEMPLATE_FILES) - set(mine)
    assert missing <= set(result.created) and (repo / ".dockerignore").exists()
    # The README exists, so its test-set section is written beside it.
    assert "README.easeml.md" in result.created
    assert "## The test set" in (repo / "README.easeml.md").read_text()

    # A second run changes nothing at all.
    again = scaffold(repo, existing=True)
    assert again.created == () and tree_digest(repo) == after


def test_init_refuses_to_overwrite_without_existing(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Dockerfile").write_text("FROM scratch\n")
    before = tree_digest(repo)
    assert easeml(["init", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "already has Dockerfile" in err and "--existing" in err
    assert tree_digest(repo) == before and sorted(p.name for p in repo.iterdir()) == ["Dockerfile"]


@pytest.mark.docker
def test_scaffolded_model_runs_in_docker(tmp_path, digits, capsys):
    require_docker(BASE_IMAGE)
    x, y = digits
    repo = tmp_path / "repo"
    scaffold(repo)
    train = write_dev_csv(tmp_path / "train.csv", x[:600], y[:600])
    subprocess.run([sys.executable, str(repo / "train.py"), str(train)], check=True, capture_output=True)
    dev = write_dev_csv(tmp_path / "dev.csv", x[1200:1400], y[1200:1400])
    process = run_local(repo_dir=repo, features=dev)
    assert easeml(["run-local", "--dir", str(repo), "--features", str(dev), "--docker"]) == 0
    out = capsys.readouterr().out
    assert "runner: docker" in out and "predictions: 200 for 200 rows" in out
    acc = float(out.split("accuracy on the dev set (column 'label'): ")[1].split()[0])
    # The same weights in the container and in the process give the same answers.
    assert acc == pytest.approx(process.accuracy, abs=1e-4) and acc > 0.85


def test_run_local_names_the_label_file_and_line_it_cannot_read(tmp_path, digits):
    """Bad input to run-local is a LocalRunError naming the file and line, not a traceback."""
    x, y = digits
    repo = tmp_path / "repo"
    scaffold(repo)
    dev = write_dev_csv(tmp_path / "dev.csv", x[:3], None)
    bad_json = tmp_path / "labels.jsonl"
    bad_json.write_text("1\n\n{oops\n2\n")
    with pytest.raises(LocalRunError, match=r"labels\.jsonl:3: not JSON"):
        run_local(repo_dir=repo, features=dev, labels=bad_json)
    short = tmp_path / "labels.csv"
    short.write_text("id,label\n1,0\n2\n3,1\n")
    with pytest.raises(LocalRunError, match=r"labels\.csv: row 3 has no 'label' column"):
        run_local(repo_dir=repo, features=dev, labels=short)


def test_run_local_names_the_limit_it_cannot_use(tmp_path, digits, monkeypatch):
    """A bad --timeout or EASEML_* limit is a LocalRunError naming it, not a traceback."""
    x, _ = digits
    repo = tmp_path / "repo"
    scaffold(repo)
    dev = write_dev_csv(tmp_path / "dev.csv", x[:3], None)
    with pytest.raises(LocalRunError, match="--timeout: must be positive"):
        run_local(repo_dir=repo, features=dev, timeout=0)
    monkeypatch.setenv("EASEML_TIMEOUT", "soon")
    with pytest.raises(LocalRunError, match="EASEML_TIMEOUT"):
        run_local(repo_dir=repo, features=dev)
