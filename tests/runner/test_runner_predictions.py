"""Parsing what a model wrote: every supported format, and clear errors for the rest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from easeml_buildbot.runner.base import ModelError
from easeml_buildbot.runner.predictions import align_to_labels, find_predictions, parse_predictions


def write(tmp_path, name, content):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return p


@pytest.mark.parametrize("name,content,expected", [
    ("predictions.csv", "3\n1\n2\n", [3, 1, 2]),
    ("predictions.csv", "prediction\n3\n1\n2\n", [3, 1, 2]),
    ("predictions.csv", "id,prediction\n7,3\n8,1\n9,2\n", [3, 1, 2]),
    ("predictions.csv", "0.5\n1.5\n2\n", [0.5, 1.5, 2.0]),
    ("predictions.csv", "cat\ndog\n\"bird, small\"\n", ["cat", "dog", "bird, small"]),
    ("predictions.txt", "a\nb\nc\n\n", ["a", "b", "c"]),
    ("predictions.jsonl", '3\n{"prediction": 1}\n2\n', [3, 1, 2]),
    ("predictions.jsonl", '"x"\n"y"\n"z"\n', ["x", "y", "z"]),
    ("predictions.jsonl", "true\nfalse\ntrue\n", [True, False, True]),
])
def test_text_formats(tmp_path, name, content, expected):
    got = parse_predictions(write(tmp_path, name, content), 3)
    assert got.tolist() == expected


def test_numpy_formats(tmp_path):
    np.save(tmp_path / "predictions.npy", np.array([[1], [2], [3]]))
    assert parse_predictions(tmp_path / "predictions.npy", 3).tolist() == [1, 2, 3]
    np.savez(tmp_path / "a.npz", predictions=np.array(["a", "b"]), other=np.zeros(5))
    assert parse_predictions(tmp_path / "a.npz", 2).tolist() == ["a", "b"]
    np.savez(tmp_path / "b.npz", only=np.array([1.0, 2.0]))
    assert parse_predictions(tmp_path / "b.npz", 2).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("name,content,n,cause,fragment", [
    ("predictions.csv", "1\n2\n", 3, "wrong_count", "2 predictions for 3 input rows"),
    ("predictions.csv", "1,2\n3,4\n", 2, "unparsable", "line 1: 2 fields"),
    ("predictions.csv", "prediction\n1\n\n2\n", 3, "unparsable", "line 3: empty prediction"),
    ("predictions.jsonl", '1\n{"oops": 2}\n', 2, "unparsable", "line 2: object without"),
    ("predictions.jsonl", "1\n[1, 2]\n", 2, "unparsable", "line 2: a prediction must be"),
    ("predictions.jsonl", "1\nnot json\n", 2, "unparsable", "line 2: not JSON"),
    ("predictions.csv", "1\nnan\n", 2, "unparsable", "row 2: not a finite number"),
    ("predictions.npy", b"garbage", 2, "unparsable", "not a readable .npy"),
    ("predictions.npz", b"garbage", 2, "unparsable", "not a readable .npz"),
    ("predictions.csv", b"\xff\xfe\x00bad", 1, "unparsable", "not UTF-8"),
])
def test_bad_predictions(tmp_path, name, content, n, cause, fragment):
    with pytest.raises(ModelError) as err:
        parse_predictions(write(tmp_path, name, content), n)
    assert err.value.cause == cause
    assert fragment in err.value.message


def test_2d_and_pickled_arrays_are_refused(tmp_path):
    np.save(tmp_path / "predictions.npy", np.zeros((3, 2)))
    with pytest.raises(ModelError, match="1-D array"):
        parse_predictions(tmp_path / "predictions.npy", 3)
    np.save(tmp_path / "p2.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ModelError) as err:
        parse_predictions(tmp_path / "p2.npy", 1)
    assert err.value.cause == "unparsable"


def test_find_predictions(tmp_path):
    with pytest.raises(ModelError) as err:
        find_predictions(tmp_path)
    assert err.value.cause == "no_predictions"
    (tmp_path / "preds.csv").write_text("1\n")
    with pytest.raises(ModelError, match="found 1 other file"):  # never its name: model-chosen
        find_predictions(tmp_path)
    (tmp_path / "predictions.csv").write_text("1\n")
    assert find_predictions(tmp_path).name == "predictions.csv"
    (tmp_path / "predictions.jsonl").write_text(json.dumps(1) + "\n")
    with pytest.raises(ModelError, match="2 predictions files"):
        find_predictions(tmp_path)


def test_align_to_labels():
    ints = np.array([1, 2, 3])
    assert align_to_labels(np.array([1.0, 2.0, 4.0]), ints).tolist() == [1.0, 2.0, 4.0]
    assert align_to_labels(np.array([1, 2]), np.array(["1", "2"])).tolist() == ["1", "2"]
    assert align_to_labels(np.array([1.0, 2.5]), np.array(["1", "2.5"])).tolist() == ["1", "2.5"]
    assert align_to_labels(np.array([" cat", "dog "]), np.array(["cat", "dog"])).tolist() == ["cat", "dog"]
    with pytest.raises(ModelError) as err:
        align_to_labels(np.array(["cat", "dog", "cow"]), ints)
    assert err.value.cause == "label_type_mismatch"
    with pytest.raises(ModelError) as err:
        align_to_labels(np.array([0.5, 1.0, 2.0]), ints)
    assert err.value.cause == "label_type_mismatch"
    # never a label value in the message
    assert "1" not in err.value.message.replace("1-D", "")
