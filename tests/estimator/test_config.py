"""`.easeml.yml` validation: defaults, the legacy form, and errors naming file, line and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from easeml_buildbot.config import (
    ConfigError,
    EasemlConfig,
    load_config,
    markdown_reference,
    parse_config,
)
from easeml_buildbot.estimator.condition import parse_condition
from easeml_buildbot.estimator.samples import sample_size

SRC = "base:.easeml.yml"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"


def test_minimal_config_and_defaults() -> None:
    cfg = parse_config("condition: n - o > 0.02 +/- 0.01\n", SRC)
    assert isinstance(cfg, EasemlConfig)
    assert cfg.condition == parse_condition("n - o > 0.02 +/- 0.01")
    assert cfg.condition_text == "n - o > 0.02 +/- 0.01"
    assert (cfg.reliability, cfg.mode, cfg.adaptivity, cfg.steps) == (0.9999, "fp-free", "full", 32)
    assert cfg.email == () and cfg.dataset == "data/test.csv.gpg" and cfg.model == {}
    assert cfg.method == "auto" and cfg.label_column == "label" and cfg.source == SRC
    assert not cfg.legacy


def test_full_config() -> None:
    cfg = parse_config(
        """
condition: d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01
reliability: 0.999
mode: fn-free
adaptivity: hybrid
steps: 8
email: [a@example.com, b@example.org]
dataset: data/holdout.jsonl.gpg
model: {command: [python, predict.py], timeout: 60, memory: 1g}
method: bennett
label_column: y
""", SRC)
    assert cfg.adaptivity == "firstChange"  # hybrid is an alias
    assert cfg.email == ("a@example.com", "b@example.org")
    assert cfg.model == {"command": ["python", "predict.py"], "timeout": 60, "memory": "1g"}
    assert cfg.method == "bennett" and cfg.label_column == "y" and cfg.mode == "fn-free"
    s = cfg.required_samples()
    assert s == sample_size(cfg.condition, 0.999, "firstChange", 8, "bennett")
    assert s.method == "bennett"


def test_single_email_string() -> None:
    assert parse_config("condition: n > 0.5 +/- 0.1\nemail: me@example.com\n").email == ("me@example.com",)


def test_legacy_ml_form() -> None:
    cfg = parse_config(
        """ml:
  - script: ./test_model.py
  - condition: n - o > 0.02 +/- 0.01
  - reliability: 0.9999
  - mode: fp-free
  - adaptivity: hybrid
  - steps: 32
  - data_mode: reuse
  - email: ci@example.com
""", SRC)
    assert cfg.legacy and cfg.script == "./test_model.py" and cfg.data_mode == "reuse"
    assert cfg.adaptivity == "firstChange" and cfg.steps == 32 and cfg.email == ("ci@example.com",)
    assert cfg.model == {"script": "./test_model.py"}


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SRC)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


LINE = re.compile(r"^base:\.easeml\.yml:(\d+): key '([\w.]+)': ")


@pytest.mark.parametrize(
    "text, line, key, message",
    [
        ("condition: n > 0.5 +/- 0.1\nreliabilty: 0.9\n", 2, "reliabilty", "did you mean 'reliability'?"),
        ("condition: n > 0.5 +/- 0.1\nstep: 3\n", 2, "step", "did you mean 'steps'?"),
        ("condition: n > 0.5 +/- 0.1\nemails: a@b.co\n", 2, "emails", "did you mean 'email'?"),
        ("condition: n > 0.5 +/- 0.1\nadaptivity: ful\n", 2, "adaptivity", "did you mean 'full'?"),
        ("condition: n > 0.5 +/- 0.1\nmethod: hoefding\n", 2, "method", "did you mean 'hoeffding'?"),
        ("condition: n > 0.5 +/- 0.1\n\nreliability: 1.5\n", 3, "reliability", "strictly between 0 and 1"),
        ("condition: n > 0.5 +/- 0.1\nreliability: yes\n", 2, "reliability", "strictly between 0 and 1"),
        ("condition: n > 0.5 +/- 0.1\nmode: fp_free\n", 2, "mode", "did you mean 'fp-free'?"),
        ("condition: n > 0.5 +/- 0.1\nsteps: 0\n", 2, "steps", "integer >= 1"),
        ("condition: n > 0.5 +/- 0.1\nsteps: 2.5\n", 2, "steps", "integer >= 1"),
        ("condition: n > 0.5 +/- 0.1\nemail: [me@example.com, nobody]\n", 2, "email", "'nobody'"),
        ("condition: n > 0.5 +/- 0.1\ndataset: /etc/passwd\n", 2, "dataset", "relative path"),
        ("condition: n > 0.5 +/- 0.1\ndataset: ../x.gpg\n", 2, "dataset", "relative path"),
        ("condition: n > 0.5 +/- 0.1\nmodel: docker\n", 2, "model", "must be a mapping"),
        ("condition: n > 0.5 +/- 0.1\nlabel_column: 3\n", 2, "label_column", "non-empty string"),
        ("# comment\ncondition: n - o >> 0.1 +/- 0.1\n", 2, "condition", "column 8: unexpected '>'"),
        ("condition: 0.5\n", 1, "condition", "must be a string"),
        ("condition: n - o > 0.1 +/- 0.1\nmethod: bennett\n", 2, "method", "does not apply"),
        ("condition: n > 0.5 +/- 0.1\ncondition: n > 0.6 +/- 0.1\n", 2, "condition", "more than once"),
        ("ml:\n  - condition: n > 0.5 +/- 0.1\n  - stepz: 3\n", 3, "ml.stepz", "did you mean 'steps'?"),
        ("ml:\n  - condition: n > 0.5 +/- 0.1\n  - adaptivity: sometimes\n", 3, "ml.adaptivity", "none, firstChange, full"),
        ("ml:\n  - condition: n > 0.5 +/- 0.1\n  - steps: 3\n    mode: fp-free\n", 3, "ml", "one 'key: value'"),
        ("condition: n > 0.5 +/- 0.1\nml:\n  - condition: n > 0.6 +/- 0.1\n", 3, "ml.condition", "both"),
        ("ml:\n  - condition: n > 0.5 +/- 0.1\n  - condition: n > 0.6 +/- 0.1\n", 3, "ml.condition", "more than once"),
    ],
)
def test_each_error_names_file_line_and_key(text: str, line: int, key: str, message: str) -> None:
    problems = _problems(text)
    hits = [p for p in problems if message in p]
    assert hits, problems
    m = LINE.match(hits[0])
    assert m, hits[0]
    assert (int(m.group(1)), m.group(2)) == (line, key)


def test_repeated_ml_key_is_checked_as_yaml_kept_it() -> None:
    """YAML keeps the last of two 'ml:' keys; its entries are checked (with their own lines)
    rather than crashing on, or zipping against, the first one's node."""
    problems = _problems("ml: x\nml:\n  - condition: n > 0.5 +/- 0.1\n  - stepz: 3\n")
    assert "base:.easeml.yml:2: key 'ml': appears more than once" in problems
    assert any(p.startswith("base:.easeml.yml:4: key 'ml.stepz': unknown key") for p in problems), problems

def test_every_problem_is_reported_at_once() -> None:
    problems = _problems("condtion: n > 0.5 +/- 0.1\nreliability: 2\nmode: maybe\nsteps: -1\n")
    assert len(problems) == 5  # 4 bad keys + the missing condition
    assert [int(LINE.match(p).group(1)) for p in problems[:4]] == [1, 2, 3, 4]
    assert problems[4] == "base:.easeml.yml: key 'condition': is required"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("condition: [\n", "YAML syntax error"),
        ("reliability: 0.9\n", "key 'condition': is required"),
        ("!!python/object:os.system {}\n", "YAML"),
    ],
)
def test_document_level_errors(text: str, message: str) -> None:
    problems = _problems(text)
    assert any(message in p for p in problems), problems
    assert all(p.startswith(SRC) for p in problems)


def test_yaml_syntax_error_has_line() -> None:
    (p,) = _problems("condition: n > 0.5 +/- 0.1\nsteps: [1, 2\nmode: fp-free\n")
    assert re.match(r"base:\.easeml\.yml:\d+: YAML syntax error", p)


def test_load_config_from_file(tmp_path: Path) -> None:
    f = tmp_path / ".easeml.yml"
    f.write_text("condition: n > 0.8 +/- 0.05\nsteps: 4\n")
    cfg = load_config(f)
    assert cfg.source == str(f) and cfg.steps == 4
    with pytest.raises(ConfigError, match=r"no such file"):
        load_config(tmp_path / "missing.yml")
    f.write_text("condition: n > 0.8 +/- 0.05\nsteps: x\n")
    with pytest.raises(ConfigError, match=re.escape(f"{f}:2: key 'steps'")):
        load_config(f)


def test_summary_says_what_is_promised() -> None:
    cfg = parse_config("condition: n > 0.8 +/- 0.05\nemail: me@example.com\n", SRC)
    text = cfg.summary()
    for part in ("n > 0.8 +/- 0.05", "32 uses", "0.9999", str(cfg.required_samples().labels),
                 "me@example.com", "fail (no false passes)"):
        assert part in text


def test_config_reference_doc_is_in_sync() -> None:
    assert DOCS.read_text(encoding="utf-8") == markdown_reference(), (
        "regenerate with: python -m easeml_buildbot.config --markdown > docs/config-reference.md")


def test_markdown_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from easeml_buildbot.config import _main

    assert _main(["--markdown"]) == 0
    out = capsys.readouterr().out
    assert out == markdown_reference()
    assert "| `condition` |" in out and "ml:" in out


def test_k_pass_and_sequential_are_valid_settings(tmp_path) -> None:
    from easeml_buildbot.config import load_config

    p = tmp_path / ".easeml.yml"
    p.write_text("condition: n > 0.8 +/- 0.05\nadaptivity: 2-pass\nmethod: sequential\nreliability: 0.99\nsteps: 8\n")
    cfg = load_config(p)
    assert (cfg.adaptivity, cfg.method) == ("2-pass", "sequential")
    assert "retires after 2 passes" in cfg.summary()
# -- hostile input: bounded memory, and the branches a configuration evaluates ---------------

BOMB = "condition: n > 0.8 +/- 0.1\nmodel:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8))


def test_yaml_alias_bomb_is_refused_before_it_expands() -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError) as err:
        parse_config(BOMB, source=SRC)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert err.value.problems == [f"{SRC}:3: YAML anchors (&name) are not allowed in .easeml.yml; "
                                  "write the value out"]


def test_yaml_alias_without_anchor_is_refused_with_its_line() -> None:
    (p,) = _problems("condition: n > 0.5 +/- 0.1\nemail: *owners\n")
    assert p.startswith(f"{SRC}:2: YAML aliases (*name) are not allowed")


def test_config_size_is_capped(tmp_path: Path) -> None:
    from easeml_buildbot.config import MAX_CONFIG_BYTES

    text = "condition: n > 0.5 +/- 0.1\n" + "#" * MAX_CONFIG_BYTES + "\n"
    (p,) = _problems(text)
    assert p == f"{SRC}: {len(text)} bytes; a configuration may have at most {MAX_CONFIG_BYTES}"
    f = tmp_path / ".easeml.yml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{f}: {len(text)} bytes")):
        load_config(f)


@pytest.mark.parametrize("steps", [100_001, 10**12])
def test_steps_are_bounded(steps: int) -> None:
    (p,) = _problems(f"condition: n > 0.5 +/- 0.1\nsteps: {steps}\n")
    assert p.startswith(f"{SRC}:2: key 'steps': must be at most 100000")
    assert parse_config("condition: n > 0.5 +/- 0.1\nsteps: 100000\n", source=SRC).steps == 100_000


def test_branches_default_branch_and_globs() -> None:
    cfg = parse_config("condition: n > 0.5 +/- 0.1\nbranches: [release/*, staging]\n", source=SRC)
    assert cfg.branches == ("release/*", "staging") and cfg.to_dict()["branches"] == ["release/*", "staging"]
    assert cfg.evaluates_branch("main", "main") and cfg.evaluates_branch("release/1.0", "main")
    assert cfg.evaluates_branch("staging", "main")
    assert not cfg.evaluates_branch("dev", "main") and not cfg.evaluates_branch("staging2", "main")
    plain = parse_config("condition: n > 0.5 +/- 0.1\n", source=SRC)
    assert plain.evaluates_branch("trunk", "trunk") and not plain.evaluates_branch("main", "trunk")
    (p,) = _problems("condition: n > 0.5 +/- 0.1\nbranches: {a: 1}\n")
    assert p.startswith(f"{SRC}:2: key 'branches': must be a branch name or a list")
