"""`.easeml.yml` keys for GPUs (`model.gpus`) and the first ease.ml/ci release (`dataMode`)."""

from __future__ import annotations

import pytest

from easeml_buildbot.config import ConfigError, parse_config

SRC = "base:.easeml.yml"

# the first release's spelling, as 4 of the 12 public ease.ml/ci repositories have it
FIRST_RELEASE = """ml:
- script : ./evaluate_model.py
- condition : n - o > 0.1 +/- 0.1
- reliability: 0.99
- mode : fp-free
- adaptivity : full
- steps : 32
- dataMode : local
- email: owner@example.com
"""


def test_first_release_dataMode_is_data_mode() -> None:
    cfg = parse_config(FIRST_RELEASE, SRC)
    assert cfg.legacy and cfg.data_mode == "local" and cfg.script == "./evaluate_model.py"
    assert cfg.steps == 32 and cfg.email == ("owner@example.com",)


def test_dataMode_and_data_mode_together_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(FIRST_RELEASE + "- data_mode: local\n", SRC)
    assert info.value.problems == [f"{SRC}:10: key 'ml.data_mode': given more than once"]


@pytest.mark.parametrize("value, expected", [(2, 2), ("all", "all"), ("ALL", "all"), (0, 0)])
def test_model_gpus(value, expected) -> None:
    cfg = parse_config(f"condition: n > 0.8 +/- 0.1\nmodel:\n  gpus: {value}\n", SRC)
    assert cfg.model["gpus"] == expected


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "true", "100000"])
def test_bad_model_gpus_names_line_and_key(value) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"condition: n > 0.8 +/- 0.1\nmodel:\n  gpus: {value}\n", SRC)
    (problem,) = info.value.problems
    assert problem.startswith(f"{SRC}:2: key 'model': gpus: must be a number of GPUs (0-256) or 'all'")


def test_model_gpus_is_no_top_level_key() -> None:
    with pytest.raises(ConfigError, match="key 'model.gpus': unknown key"):
        parse_config("condition: n > 0.8 +/- 0.1\nmodel.gpus: 1\n", SRC)
