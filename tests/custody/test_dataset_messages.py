"""No error message quotes a value of the test set (or anything a model wrote).

Every malformed test set below carries a canary in a value (or a header/array name, which
in a headerless file is a data row); the error from ``check_plaintext`` and from
``decrypted_dataset`` (real gpg) must name the file, line, column position or count, and
never the canary. The same for the label checks and for predictions files a model wrote
after reading the features.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from easeml_buildbot.custody.dataset import DatasetError, check_plaintext, decrypted_dataset, encrypt_dataset
from easeml_buildbot.runner.base import ModelError
from easeml_buildbot.runner.predictions import align_to_labels, find_predictions, parse_predictions

CANARY = "zq7CANARY41x"
NUM = "987654.3217"  # a numeric canary (a feature or label value)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


MALFORMED: dict[str, tuple[str, bytes]] = {
    "headerless CSV": ("csv", f"{CANARY},{NUM},3\n1,2,{CANARY}\n".encode()),
    "headerless TSV (ease.ml/ci layout)": ("csv", f"{NUM}\t{CANARY}\t1\n2\t3\t0\n".encode()),
    "header without the label column": ("csv", f"{CANARY},b\n1,{NUM}\n".encode()),
    "wrong column count": ("csv", f"a,b,label\n1,2,0\n{CANARY},{NUM},1,9\n".encode()),
    "too few columns": ("csv", f"a,b,label\n{CANARY},{NUM}\n".encode()),
    "empty label": ("csv", f"a,label\n{CANARY},\n".encode()),
    "non-UTF-8 label": ("csv", b"a,label\n" + NUM.encode() + b"," + CANARY.encode() + b"\xff\xfe\n"),
    "non-UTF-8, quoted": ("csv", b'a,label\n"' + CANARY.encode() + b'\xff",1\n'),
    "non-UTF-8 header": ("csv", CANARY.encode() + b"\xff,label\n1,2\n"),
    "unterminated quote": ("csv", f'a,label\n"{CANARY},1\n2,3\n'.encode()),
    "field over the csv limit": ("csv", ("a,label\n\"" + CANARY * 20000 + "\",1\n").encode()),
    "bad JSONL": ("jsonl", f'{{"a": "{CANARY}", "label": 1}}\n{{"a": {CANARY}}}\n'.encode()),
    "JSONL control character": ("jsonl", f'{{"a": "{CANARY}\x01", "label": 1}}\n'.encode()),
    "JSONL not an object": ("jsonl", f'["{CANARY}", {NUM}]\n'.encode()),
    "JSONL label missing": ("jsonl", f'{{"{CANARY}": {NUM}}}\n'.encode()),
    "JSONL label not a scalar": ("jsonl", f'{{"a": 1, "label": ["{CANARY}"]}}\n'.encode()),
    "NPZ without the label array": ("npz", _npz(**{CANARY: np.arange(3), "x": np.ones(3)})),
    "NPZ lengths differ": ("npz", _npz(**{"label": np.arange(3), CANARY: np.ones(4)})),
    "NPZ 2-D label": ("npz", _npz(label=np.full((2, 2), float(NUM)), x=np.ones(2))),
    "NPZ object array": ("npz", _npz(label=np.array([CANARY, 1], dtype=object), x=np.ones(2))),
}


def _assert_clean(message: str) -> None:
    assert CANARY not in message and CANARY[:6] not in message, message
    assert NUM not in message and NUM[:6] not in message, message


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_dataset_errors_quote_no_value(case, service_keys, tmp_path):
    fmt, content = MALFORMED[case]
    plain = tmp_path / f"test.{fmt}"
    plain.write_bytes(content)
    with pytest.raises(DatasetError) as err:
        check_plaintext(plain)
    _assert_clean(str(err.value))
    assert str(plain) in str(err.value)  # names the file
    enc = tmp_path / f"test.{fmt}.gpg"
    encrypt_dataset(service_keys.public, plain, enc)
    with pytest.raises(DatasetError) as err:
        with decrypted_dataset(enc, service_keys.private):
            pytest.fail("a malformed test set must not be usable")
    _assert_clean(str(err.value))
    assert str(enc) in str(err.value)


def test_headerless_tsv_says_what_to_do(tmp_path):
    plain = tmp_path / "test.csv"
    plain.write_bytes(MALFORMED["headerless TSV (ease.ml/ci layout)"][1])
    with pytest.raises(DatasetError, match=r"line 1: label column 'label' not in the CSV header "
                       r"\(1 field\).*first line contains tabs"):
        check_plaintext(plain)


@pytest.mark.parametrize("labels, predictions", [
    (np.array([CANARY, "cat"]), np.array([CANARY.encode(), b"y"])),
    (np.array([int(float(NUM)), 3]), np.array([CANARY, "x"])),
    (np.array([int(float(NUM)), 3]), np.array([1.5, 2.0])),
    (np.array([CANARY * 3, "b"]), np.array([NUM.encode(), b"z"])),
    (np.array([True, False]), np.array([CANARY, "y"])),
])
def test_label_type_errors_quote_no_label(labels, predictions):
    with pytest.raises(ModelError) as err:
        align_to_labels(predictions, labels, who="head model")
    _assert_clean(str(err.value))
    assert str(len(CANARY * 3)) not in str(err.value)  # not even a dtype width like <U36


def _write(out, name: str, data: bytes) -> None:
    (out / name).write_bytes(data)


MODEL_OUTPUTS = {
    # a model that has read the features tries to carry them out through an error
    "file names": [(f"preds-{CANARY}.csv", b"1\n")],
    "npz array names": [("predictions.npz", _npz(**{CANARY: np.arange(2), "b": np.arange(2)}))],
    "npy header": [("predictions.npy", b"\x93NUMPY\x01\x00\x20\x00{'descr': '" + CANARY.encode() + b"'}\n")],
    "structured dtype": [("predictions.npy", None)],
    "csv fields": [("predictions.csv", f"{CANARY},{NUM}\n".encode())],
    "csv quoting": [("predictions.csv", f'"{CANARY}\n'.encode())],
    "jsonl": [("predictions.jsonl", f"{CANARY}\n".encode())],
    "jsonl object": [("predictions.jsonl", f'{{"{CANARY}": 1}}\n'.encode())],
    "non-finite": [("predictions.txt", f"{NUM}\nnan\n".encode())],
    "count": [("predictions.txt", f"{CANARY}\n".encode())],
}


@pytest.mark.parametrize("case", sorted(MODEL_OUTPUTS))
def test_prediction_errors_quote_nothing_the_model_wrote(case, tmp_path):
    for name, data in MODEL_OUTPUTS[case]:
        if data is None:
            np.save(tmp_path / name, np.zeros(2, dtype=[(CANARY, "i4"), (NUM, "f8")]), allow_pickle=False)
        else:
            _write(tmp_path, name, data)
    with pytest.raises(ModelError) as err:
        parse_predictions(find_predictions(tmp_path), n_rows=2)
    _assert_clean(str(err.value))


def test_messages_still_name_file_line_and_count(tmp_path):
    plain = tmp_path / "t.csv"
    plain.write_bytes(MALFORMED["wrong column count"][1])
    with pytest.raises(DatasetError, match=r"t.csv: line 3: 4 fields, the header has 3"):
        check_plaintext(plain)
    plain = tmp_path / "t.jsonl"
    plain.write_bytes(MALFORMED["bad JSONL"][1])
    with pytest.raises(DatasetError, match=r"t.jsonl: line 2: not valid JSON \(Expecting value, column 7\)"):
        check_plaintext(plain)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "predictions.jsonl").write_text(json.dumps({"prediction": 1}) + "\n")
    with pytest.raises(ModelError, match=r"predictions.jsonl: 1 predictions for 2 input rows"):
        parse_predictions(tmp_path / "p" / "predictions.jsonl", n_rows=2)
