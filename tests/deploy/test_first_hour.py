"""A data scientist's first hour: install the client, `easeml init`, the user guide's commands
in order, the scaffold's ignore files, `dataset encrypt` inside a repository, and
`run-local --docker` on a machine without the service's debootstrap-built base image."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from deploy.helpers import BASE_IMAGE, ROOT, docker_ok
from easeml_buildbot.custody import dataset as ds_mod
from easeml_buildbot.custody import keys as keys_mod

VENV_BIN = Path(sys.executable).parent
GUIDE = ROOT / "docs" / "user-guide.md"
SERVER_STACK = ("buildbot", "buildbot_worker", "buildbot_www", "github", "twisted", "matplotlib")


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data, d.target


@pytest.fixture(scope="module")
def service_key(tmp_path_factory):
    """The service's key pair, as the operator made it (outside every repository)."""
    d = tmp_path_factory.mktemp("service-keys")
    pub, priv = keys_mod.create_keypair(d, passphrase=None)
    return Path(pub), Path(priv)


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, label: str = "label") -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"px{i}" for i in range(x.shape[1])] + [label])
        for row, lab in zip(x, y):
            w.writerow([int(v) for v in row] + [int(lab)])
    return path


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("EASEML_")}
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(GIT_AUTHOR_NAME="Data Scientist", GIT_AUTHOR_EMAIL="ds@example.com",
             GIT_COMMITTER_NAME="Data Scientist", GIT_COMMITTER_EMAIL="ds@example.com",
             GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_SYSTEM="/dev/null")
    return e


def easeml(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `easeml` command, as a user runs it (stderr is what they read)."""
    return subprocess.run([str(VENV_BIN / "easeml"), *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=300)


def guide_blocks() -> list[str]:
    """The user guide's shell blocks marked `<!-- first-hour -->`, in order."""
    text = GUIDE.read_text()
    blocks = re.findall(r"<!-- first-hour -->\s*\n\s*```sh\n(.*?)\n\s*```", text, flags=re.S)
    return [re.sub(r"^ +", "", b, flags=re.M) for b in blocks]


def test_user_guide_first_hour_commands_in_order(tmp_path, digits, service_key):
    """`easeml init` and then the guide's own commands, in the guide's order, in a fresh
    directory: the encrypt command works (it creates data/) and git gets the ciphertext only."""
    blocks = guide_blocks()
    assert len(blocks) == 3 and blocks[0].startswith("easeml init my-model"), blocks
    script = "\n".join(blocks)
    assert "easeml dataset encrypt --key easeml_pub.asc test.csv data/test.csv.gpg" in script
    if docker_ok() or subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode:
        print(f"SKIP the guide's --docker line: {docker_ok() or BASE_IMAGE + ' missing'}")
        script = "\n".join(ln for ln in script.splitlines() if "--docker" not in ln)
    # What the data scientist brings: a dev set, the labelled test set, the operator's key.
    x, y = digits
    repo = tmp_path / "my-model"
    repo.mkdir()
    write_csv(repo / "dev.csv", x[:400], y[:400])
    write_csv(repo / "test.csv", x[400:1800], y[400:1800])  # 1,397 rows; the template needs 1,369
    pub, priv = service_key
    (repo / "easeml_pub.asc").write_text(pub.read_text())
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "predictions: 400 for 400 rows" in r.stdout
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, env=env(), capture_output=True, text=True,
                             check=True).stdout.split()
    for f in ("data/test.csv.gpg", ".easeml.yml", "Dockerfile", "predict.py", "model/weights.npz"):
        assert f in tracked, (f, tracked)
    assert "test.csv" not in tracked and "dev.csv" not in tracked, tracked
    with ds_mod.decrypted_dataset(repo / "data/test.csv.gpg", priv) as ds:
        assert ds.n_rows == 1397


def test_scaffold_keeps_plaintext_sets_out_of_git_and_the_build_context(tmp_path):
    from easeml_buildbot.runner.docker_runner import ALWAYS_EXCLUDED, _dockerignore
    from docker.utils.build import tar as build_tar

    repo = tmp_path / "repo"
    assert easeml("init", str(repo), cwd=tmp_path).returncode == 0
    for name in ("test.csv", "dev.csv", "sub/train.jsonl", "extra.npz", "data/test.csv.gpg",
                 "model/weights.npz", "model/vocabulary.csv", "vendor/pkg/__init__.py",
                 "easeml_priv.asc"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("x\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, env=env(), check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env(), check=True)
    tracked = set(subprocess.run(["git", "ls-files"], cwd=repo, env=env(), capture_output=True, text=True,
                                 check=True).stdout.split())
    assert {"data/test.csv.gpg", "model/weights.npz", "model/vocabulary.csv", "vendor/pkg/__init__.py",
            "predict.py", ".easeml.yml", ".gitignore", ".dockerignore"} <= tracked, tracked
    assert not tracked & {"test.csv", "dev.csv", "sub/train.jsonl", "extra.npz", "easeml_priv.asc"}, tracked
    # The build context exactly as the service's DockerRunner makes it (docker-py's tar with
    # the repository's .dockerignore, before the runner's own exclusions).
    with build_tar(str(repo), exclude=_dockerignore(repo), dockerfile=("Dockerfile", None)) as fh:
        names = set(tarfile.open(fileobj=fh).getnames())
    assert {"Dockerfile", "predict.py", "model/weights.npz", "model/vocabulary.csv",
            "vendor/pkg/__init__.py"} <= names, names
    assert not names & {"test.csv", "dev.csv", "sub/train.jsonl", "extra.npz", "data/test.csv.gpg",
                        "easeml_priv.asc"}, names
    assert not any(n.startswith(".git/") for n in names)
    assert ALWAYS_EXCLUDED  # the runner adds its own (.git, *.gpg) on top


def test_encrypt_inside_a_repository_uses_its_config(tmp_path, digits, service_key):
    x, y = digits
    pub, priv = service_key
    repo = tmp_path / "repo"
    assert easeml("init", str(repo), cwd=tmp_path).returncode == 0
    write_csv(repo / "small.csv", x[:200], y[:200])
    # Too small for the template's condition: refused, naming both numbers and the condition.
    r = easeml("dataset", "encrypt", "--key", str(pub), "small.csv", "data/test.csv.gpg", cwd=repo)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "easeml: error: small.csv: 200 rows, but the condition 'n > 0.8 +/- 0.05'" in r.stderr
    assert "needs 1,369 rows" in r.stderr and "--allow-small" in r.stderr and ".easeml.yml" in r.stderr
    assert not (repo / "data" / "test.csv.gpg").exists()
    # The explicit flag overrides; the output folder is created.
    r = easeml("dataset", "encrypt", "--allow-small", "--key", str(pub), "small.csv", "data/test.csv.gpg",
               cwd=repo)
    assert r.returncode == 0, r.stderr
    assert "warning: --allow-small: 200 rows" in r.stderr
    with ds_mod.decrypted_dataset(repo / "data/test.csv.gpg", priv) as ds:
        assert ds.n_rows == 200
    # The label column comes from .easeml.yml (here `y`), also when run from a subdirectory.
    cfg = repo / ".easeml.yml"
    cfg.write_text(cfg.read_text().replace("label_column: label", "label_column: y")
                   .replace('condition: "n > 0.8 +/- 0.05"', 'condition: "n > 0.5 +/- 0.2"'))
    (repo / "sets").mkdir()
    write_csv(repo / "sets" / "t.csv", x[:200], y[:200], label="y")
    r = easeml("dataset", "encrypt", "--key", str(pub), "t.csv", "../data/test.csv.gpg", cwd=repo / "sets")
    assert r.returncode == 0, r.stderr
    assert "t.csv: csv, 200 rows, label column 'y'" in r.stdout
    # A broken config, a missing key, an output under a file: one message each, naming the file.
    cfg.write_text(cfg.read_text().replace('condition: "n > 0.5 +/- 0.2"', 'condition: "n >> 0.5"'))
    r = easeml("dataset", "encrypt", "--key", str(pub), "sets/t.csv", "data/test.csv.gpg", cwd=repo)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("easeml: error: .easeml.yml:14: key 'condition': "), r.stderr
    cfg.write_text(cfg.read_text().replace('condition: "n >> 0.5"', 'condition: "n > 0.5 +/- 0.2"'))
    r = easeml("dataset", "encrypt", "--key", "nokey.asc", "sets/t.csv", "data/test.csv.gpg", cwd=repo)
    assert r.returncode == 1 and r.stderr.strip() == "easeml: error: nokey.asc: public key file not found"
    r = easeml("dataset", "encrypt", "--key", str(pub), "sets/t.csv", "predict.py/test.csv.gpg", cwd=repo)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "easeml: error: predict.py: cannot create the output folder: a file of that name exists" in r.stderr


def test_client_commands_run_without_the_server_stack(tmp_path, digits, service_key):
    """`pip install easeml-buildbot` (no extra) is the client: no Buildbot, Twisted, PyGithub
    or matplotlib, and the client commands work with those imports made impossible."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for name in ("buildbot", "pygithub", "twisted", "matplotlib"):
        assert name not in core, name
        assert any(name in d.lower() for d in project["optional-dependencies"]["server"]), name
    for extra in ("test", "demo"):  # setup.sh installs .[test]; the demo runs a master
        assert "easeml-buildbot[server]" in project["optional-dependencies"][extra]
    for dockerfile in ("master/Dockerfile", "worker/Dockerfile"):
        assert '"/src[server,postgres]"' in (ROOT / dockerfile).read_text(), dockerfile
    x, y = digits
    write_csv(tmp_path / "dev.csv", x[:100], y[:100])
    write_csv(tmp_path / "test.csv", x[:1400], y[:1400])
    blocker = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_STACK!r}:
            raise ImportError(f"{{name}} is not installed (client only)")
sys.meta_path.insert(0, Block())
import easeml_buildbot.runner.docker_runner, easeml_buildbot.runner.evaluate  # worker evaluate, --docker
from easeml_buildbot.cli import main
for argv in (["init", "repo"], ["check-config", "repo/.easeml.yml"], ["samples", "repo/.easeml.yml"],
             ["dataset", "encrypt", "--key", {str(service_key[0])!r}, "test.csv", "repo/data/test.csv.gpg"],
             ["run-local", "--dir", "repo", "--features", "dev.csv"]):
    assert main(argv) == 0, argv
open("labels.csv", "w").write("label\\n" + "1\\n" * 1400)
open("new.csv", "w").write("1\\n" * 1400)
assert main(["evaluate", "--config", "repo/.easeml.yml", "--labels", "labels.csv", "--new", "new.csv"]) == 0
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in {SERVER_STACK!r}))
"""
    r = subprocess.run([sys.executable, "-c", blocker], cwd=tmp_path, env=env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "loaded: []" in r.stdout and "predictions: 100 for 100 rows" in r.stdout


def test_run_local_docker_says_how_to_build_a_missing_base_image(tmp_path, monkeypatch, digits):
    """No debootstrap here: run-local --docker names the command that builds the base."""
    reason = docker_ok()
    if reason:
        pytest.skip(reason)
    from easeml_buildbot.cli import main
    from easeml_buildbot.scaffold import cli as scaffold_cli
    from easeml_buildbot.scaffold.local import LocalRunError, run_local

    # The shipped Dockerfile is what `easeml base-image` builds and prints.
    assert "FROM ${DEBIAN}" in scaffold_cli.base_image_dockerfile()
    assert "python3-numpy" in scaffold_cli.base_image_dockerfile()
    # A machine without the base image: a tag no daemon has stands in for easeml/python:bookworm.
    missing = f"easeml-test-missing/python:{os.getpid()}"
    monkeypatch.setattr(scaffold_cli, "BASE_IMAGE", missing)
    repo = tmp_path / "repo"
    assert main(["init", str(repo)]) == 0
    (repo / "Dockerfile").write_text((repo / "Dockerfile").read_text().replace(BASE_IMAGE, missing))
    x, y = digits
    dev = write_csv(tmp_path / "dev.csv", x[:20], y[:20])
    with pytest.raises(LocalRunError) as e:
        run_local(repo_dir=repo, features=dev, docker=True)
    msg = str(e.value)
    line = 1 + (repo / "Dockerfile").read_text().splitlines().index(f"FROM {missing}")
    assert f"Dockerfile:{line}: base image {missing!r} is not on this machine" in msg, msg
    assert "`easeml base-image`" in msg, msg
