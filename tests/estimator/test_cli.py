"""`easeml samples`, `easeml check-config`, `easeml evaluate` through the real dispatcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from easeml_buildbot.cli import main
from easeml_buildbot.estimator.cli import read_column
from easeml_buildbot.estimator.samples import sample_size

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_samples_from_flags_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "samples", "--condition", "n > 0.8 +/- 0.05", "--reliability", "0.9999",
                     "--adaptivity", "full", "--steps", "32", "--method", "hoeffding", "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["labels"] == 6279 and d["unlabeled"] == 0 and d["method"] == "hoeffding"
    assert d["clauses"][0]["labels"] == 6279 and d["clauses"][0]["technique"] == "hoeffding-split"


def test_samples_auto_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    cond = "d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01"
    rc, out, _ = run(capsys, "samples", "-c", cond, "-r", "0.9999", "-a", "full", "-H", "32")
    s = sample_size(cond, 0.9999, "full", 32)
    assert rc == 0
    assert f"labels:      {s.labels}" in out and f"unlabeled:   {s.unlabeled}" in out
    assert "bennett" in out and "hoeffding" in out
    rc, out, _ = run(capsys, "samples", "-c", cond, "--method", "bennett", "--labelling", "active", "--json")
    d = json.loads(out)
    assert d["labelling"] == "active" and d["labels"] < d["unlabeled"]


def test_samples_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / ".easeml.yml"
    f.write_text("condition: n - o > 0.1 +/- 0.1\nreliability: 0.99\nadaptivity: full\nsteps: 32\nmethod: hoeffding\n")
    rc, out, _ = run(capsys, "samples", str(f), "--json")
    assert rc == 0 and json.loads(out)["labels"] == 5496
    # flags override the file
    rc, out, _ = run(capsys, "samples", str(f), "--steps", "8", "--json")
    assert json.loads(out)["labels"] == sample_size("n - o > 0.1 +/- 0.1", 0.99, "full", 8, "hoeffding").labels


def test_samples_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "samples", "-c", "n - o >> 0.1")
    assert rc == 2 and out == "" and "column 8" in err and "^" in err and "Traceback" not in err
    rc, _, err = run(capsys, "samples")
    assert rc == 2 and "--condition" in err
    rc, _, err = run(capsys, "samples", "-c", "n - o > 0.1 +/- 0.1", "--method", "bennett")
    assert rc == 2 and "does not apply" in err
    rc, _, err = run(capsys, "samples", str(tmp_path / "nope.yml"))
    assert rc == 2 and "nope.yml: no such file" in err


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / ".easeml.yml"
    f.write_text("condition: n > 0.8 +/- 0.05\nemail: team@example.com\nsteps: 16\n")
    rc, out, _ = run(capsys, "check-config", str(f))
    assert rc == 0 and "16 uses" in out and "team@example.com" in out and len(out.strip().splitlines()) == 1
    rc, out, _ = run(capsys, "check-config", str(f), "--json")
    assert json.loads(out)["samples"]["labels"] == sample_size("n > 0.8 +/- 0.05", 0.9999, "full", 16).labels
    f.write_text("condition: n > 0.8 +/- 0.05\nstpes: 16\nmode: strict\n")
    rc, out, err = run(capsys, "check-config", str(f))
    assert rc == 1 and out == ""
    assert f"{f}:2: key 'stpes': unknown key (did you mean 'steps'?)" in err
    assert f"{f}:3: key 'mode'" in err


def test_check_config_default_path(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "check-config")
    assert rc == 1 and ".easeml.yml: no such file" in err


@pytest.fixture
def eval_files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    n = 4000
    y = rng.integers(0, 3, n)
    old = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)
    new = np.where(rng.random(n) < 0.9, y, (y + 2) % 3)
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(y)))
    np.save(tmp_path / "new.npy", new)
    (tmp_path / "old.jsonl").write_text("".join(json.dumps({"prediction": int(v)}) + "\n" for v in old))
    (tmp_path / "new.csv").write_text("prediction\n" + "".join(f"{v}.0\n" for v in new))
    (tmp_path / "pass.yml").write_text("condition: n - o > 0.1 +/- 0.05\nreliability: 0.99\nsteps: 4\n")
    (tmp_path / "fail.yml").write_text("condition: n - o > 0.3 +/- 0.05\nreliability: 0.99\nsteps: 4\n")
    return {"y": tmp_path / "labels.csv", "new": tmp_path / "new.npy", "old": tmp_path / "old.jsonl",
            "newcsv": tmp_path / "new.csv", "pass": tmp_path / "pass.yml", "fail": tmp_path / "fail.yml",
            "arrays": (y, new, old)}


def test_evaluate_pass_and_fail(eval_files, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "evaluate", "--config", str(eval_files["pass"]), "--labels", str(eval_files["y"]),
                     "--new", str(eval_files["new"]), "--old", str(eval_files["old"]), "--json")
    assert rc == 0
    v = json.loads(out)
    y, new, old = eval_files["arrays"]
    assert v["outcome"] == "pass" and v["estimates"]["n"] == pytest.approx(float(np.mean(new == y)))
    assert v["estimates"]["o"] == pytest.approx(float(np.mean(old == y)))
    rc, out, _ = run(capsys, "evaluate", "--config", str(eval_files["fail"]), "--labels", str(eval_files["y"]),
                     "--new", str(eval_files["newcsv"]), "--old", str(eval_files["old"]))
    assert rc == 1 and out.startswith("FAIL") and "<- decided" in out


def test_evaluate_input_errors(eval_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short.csv"
    short.write_text("1\n2\n")
    rc, _, err = run(capsys, "evaluate", "--config", str(eval_files["pass"]), "--labels", str(eval_files["y"]),
                     "--new", str(short), "--old", str(eval_files["old"]))
    assert rc == 2 and "2 predictions for 4000 labels" in err
    rc, _, err = run(capsys, "evaluate", "--config", str(eval_files["pass"]), "--labels", str(eval_files["y"]),
                     "--new", str(eval_files["new"]))
    assert rc == 2 and "no old-model predictions" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prediction": 1}\n{oops\n')
    rc, _, err = run(capsys, "evaluate", "--config", str(eval_files["pass"]), "--labels", str(eval_files["y"]),
                     "--new", str(bad), "--old", str(eval_files["old"]))
    assert rc == 2 and f"{bad}:2: not JSON" in err


def test_evaluate_unparsable_csv_is_a_user_error(eval_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cell beyond the csv module's field limit is reported with the file, not as a traceback."""
    huge = tmp_path / "huge.csv"
    huge.write_text("prediction\n" + "1" * 200_000 + "\n")
    rc, out, err = run(capsys, "evaluate", "--config", str(eval_files["pass"]), "--labels", str(eval_files["y"]),
                       "--new", str(huge), "--old", str(eval_files["old"]))
    assert rc == 2 and out == "" and err.startswith(f"easeml: {huge}: ") and "field limit" in err

def test_read_column_formats(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,label\n1,cat\n2,dog\n")
    assert read_column(tmp_path / "a.csv", "label").tolist() == ["cat", "dog"]
    (tmp_path / "b.csv").write_text("3\n4\n")
    assert read_column(tmp_path / "b.csv").tolist() == [3.0, 4.0]
    (tmp_path / "c.jsonl").write_text("1\n[2]\n{\"y\": 3}\n")
    assert read_column(tmp_path / "c.jsonl").tolist() == [1.0, 2.0, 3.0]
    np.save(tmp_path / "d.npy", np.array([[1], [0]]))
    assert read_column(tmp_path / "d.npy").tolist() == [1.0, 0.0]


def test_console_script_as_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "easeml_buildbot", "samples", "-c", "n - o > 0.1 +/- 0.1",
                        "-r", "0.99", "-a", "full", "-H", "32", "-m", "hoeffding", "--json"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["labels"] == 5496 and p.stderr == ""


def test_evaluate_with_active_labelling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Labels only where the models disagree (empty cells elsewhere) decide d and n - o."""
    rng = np.random.default_rng(8)
    n = 3000
    y = rng.integers(0, 2, n)
    old = np.where(rng.random(n) < 0.7, y, 1 - y)
    new = old.copy()
    flip = rng.random(n) < 0.05
    new[flip] = y[flip]
    (tmp_path / "c.yml").write_text("condition: d < 0.2 +/- 0.05 /\\ n - o > 0 +/- 0.05\nreliability: 0.99\n"
                                    "steps: 2\nmethod: bennett\n")
    (tmp_path / "y.csv").write_text("label\n" + "".join(f"{v if a != b else ''}\n" for v, a, b in zip(y, new, old)))
    np.save(tmp_path / "new.npy", new)
    np.save(tmp_path / "old.npy", old)
    rc, out, err = run(capsys, "evaluate", "--config", str(tmp_path / "c.yml"), "--labels", str(tmp_path / "y.csv"),
                       "--new", str(tmp_path / "new.npy"), "--old", str(tmp_path / "old.npy"), "--json",
                       "--all-rows")
    v = json.loads(out)
    assert v["estimates"]["n"] is None and v["estimates"]["d"] == pytest.approx(float(np.mean(new != old)))
    assert v["clauses"][1]["estimate"] == pytest.approx(float(np.mean(new == y) - np.mean(old == y)))
    assert rc == (0 if v["outcome"] == "pass" else 1)


def test_estimator_core_imports_neither_buildbot_nor_twisted() -> None:
    code = ("import sys, easeml_buildbot.estimator, easeml_buildbot.estimator.cli, easeml_buildbot.config\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('buildbot', 'twisted'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout + p.stderr


def test_evaluate_decides_on_the_planned_rows_like_the_service(eval_files, capsys: pytest.CaptureFixture[str]) -> None:
    """The service decides on the first plan.rows rows; local evaluate used all rows, so the
    same predictions could get different verdicts. Now it uses the same rows (and says so);
    --all-rows decides on every row."""
    from easeml_buildbot.config import load_config

    cfg = eval_files["pass"].with_name("few.yml")
    cfg.write_text("condition: n - o > 0.1 +/- 0.1\nreliability: 0.9\nsteps: 2\nmethod: exact\n")
    plan = load_config(cfg).required_samples()
    y, new, old = eval_files["arrays"]
    assert plan.rows < len(y)
    args = ("evaluate", "--config", str(cfg), "--labels", str(eval_files["y"]),
            "--new", str(eval_files["new"]), "--old", str(eval_files["old"]), "--json")
    rc, out, err = run(capsys, *args)
    v = json.loads(out)
    assert v["samples_used"] == plan.rows and f"rows 1-{plan.rows} of {len(y)}" in err
    assert v["estimates"]["n"] == pytest.approx(float(np.mean(new[: plan.rows] == y[: plan.rows])))
    rc, out, _ = run(capsys, *args, "--all-rows")
    assert json.loads(out)["samples_used"] == len(y)


def test_check_config_says_when_a_d_clause_would_shrink_the_plan(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from easeml_buildbot.estimator.condition import parse_condition

    (tmp_path / "a.yml").write_text("condition: n - o > 0.02 +/- 0.02\nreliability: 0.998\nadaptivity: none\n"
                                    "steps: 7\n")
    rc, out, _ = run(capsys, "check-config", str(tmp_path / "a.yml"))
    now = sample_size("n - o > 0.02 +/- 0.02", 0.998, "none", 7).labels
    with_d = sample_size("n - o > 0.02 +/- 0.02 /\\ d < 0.1 +/- 0.01", 0.998, "none", 7)
    assert rc == 0 and with_d.labels < now
    assert f"hint: adding `{parse_condition('d < 0.1 +/- 0.01')}`" in out
    assert f"needs {with_d.labels:,} labels" in out and f"instead of {now:,}" in out
    (tmp_path / "b.yml").write_text("condition: d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.02\nreliability: 0.998\n"
                                    "adaptivity: none\nsteps: 7\n")
    rc, out, _ = run(capsys, "check-config", str(tmp_path / "b.yml"))
    assert rc == 0 and "hint" not in out
