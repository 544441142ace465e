"""Labels on demand, custody side: the labels file matched by id (never position), clear
refusals naming file and count (never an id), and the ledger's awaiting_labels use that is
spent once, never released, and closed by the re-evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from easeml_buildbot.custody import labels as lab
from easeml_buildbot.custody.dataset import encrypt_dataset
from easeml_buildbot.custody.ledger import Ledger, LedgerError


def _labels_file(tmp_path, service_keys, text, name="labels.csv"):
    plain = tmp_path / name
    plain.write_text(text)
    enc = tmp_path / (name + ".gpg")
    encrypt_dataset(service_keys.public, plain, enc)
    plain.unlink()
    return enc


def test_labels_are_matched_by_id_not_position(tmp_path, service_keys):
    # the file lists ids in another order than the rows are scored, with one unknown id
    enc = _labels_file(tmp_path, service_keys, "id,label\nc,2\na,0\nzz,9\n")
    got = lab.read_labels(enc, service_keys.private, None, id_column="id", label_column="label",
                          source="abc:data/labels.csv.gpg")
    ids = lab.normalize_ids(["a", "b", "c"])
    m = lab.match_labels(ids, np.array([True, False, True]), got)
    assert m.labelled.tolist() == [True, False, True] and m.missing.tolist() == []
    assert lab.typed_labels(m).tolist() == [0, None, 2] and m.unmatched == 1
    m = lab.match_labels(ids, np.array([True, True, True]), got)
    assert m.missing.tolist() == [1] and m.missing_ids(ids) == ["b"]
    err = lab.missing_error("data/labels.csv.gpg", 1, 3)
    assert str(err) == ("data/labels.csv.gpg: 1 of the 3 rows where the two models disagree have no label; "
                        "the owners have been sent their ids")


def test_ids_normalise_like_labels():
    # all-integer ids compare as integers (a file written by a spreadsheet may drop zeros) ...
    assert lab.normalize_ids(["007", "12"]).tolist() == ["7", "12"]
    # ... any text id makes every id text, as the label column's rule does
    assert lab.normalize_ids(["007", "7.5", "x"]).tolist() == ["007", "7.5", "x"]


def test_bad_labels_files_name_file_and_row_never_the_id(tmp_path, service_keys):
    secret = "row-4f1d"
    dup = _labels_file(tmp_path, service_keys, f"id,label\n{secret},1\nq,0\n{secret},0\n", "dup.csv")
    with pytest.raises(lab.LabelsError) as e:
        lab.read_labels(dup, service_keys.private, None, id_column="id", label_column="label", source="S:l.csv.gpg")
    assert str(e.value).startswith("S:l.csv.gpg: 1 id(s) are given more than once (data row 3")
    assert secret not in str(e.value)
    noid = _labels_file(tmp_path, service_keys, "key,label\nq,0\n", "noid.csv")
    with pytest.raises(lab.LabelsError, match=r"S:l.csv.gpg: line 1: id column 'id' not in the CSV header"):
        lab.read_labels(noid, service_keys.private, None, id_column="id", label_column="label", source="S:l.csv.gpg")
    empty = _labels_file(tmp_path, service_keys, "id,label\nq,\n", "empty.csv")
    with pytest.raises(lab.LabelsError, match=r"S:l.csv.gpg: line 2: empty label"):
        lab.read_labels(empty, service_keys.private, None, id_column="id", label_column="label", source="S:l.csv.gpg")
    with pytest.raises(lab.LabelsError) as e:
        lab.check_unique(lab.normalize_ids(["a", secret, "b", secret]), "T:test.csv.gpg", np.array([4, 0, 2, 9]))
    assert str(e.value) == "T:test.csv.gpg: 1 row id(s) repeat (data row 10 is the first); every row needs its own id"


def test_awaiting_labels_use_is_spent_once_and_closed_by_commit(ledger_url):
    with Ledger(ledger_url) as led:
        r = led.reserve("acme/m", "c" * 64, 3, "none", commit="h1", base="b1")
        st = led.await_labels(r.use_id, {"status": "labels_needed", "labels_needed": {"ids": ["x"]}})
        assert (st.uses, st.pending, st.awaiting_labels) == (1, 0, 1)
        assert [u.id for u in led.awaiting("acme/m")] == [r.use_id]
        # a lost-worker retry or a re-run that scored nothing: the use stays spent and waiting
        led.release(r.use_id, reason="the worker was lost")
        assert led.use(r.use_id).state == "awaiting_labels" and led.state("acme/m", "c" * 64).uses == 1
        # the re-run of the same (head, base) gets that use back, nothing new is spent
        again = led.reserve("acme/m", "c" * 64, 3, "none", commit="h1", base="b1")
        assert (again.use_id, again.fresh, again.state) == (r.use_id, False, "awaiting_labels")
        led.await_labels(r.use_id, {"status": "labels_needed", "labels_needed": {"ids": []}})  # idempotent
        st = led.commit(r.use_id, "pass", {"status": "scored"})
        assert (st.uses, st.committed, st.awaiting_labels, st.reservations) == (1, 1, 0, 1)
        with pytest.raises(LedgerError, match="already committed"):
            led.await_labels(r.use_id, {"status": "labels_needed"})
        # another head is another use
        other = led.reserve("acme/m", "c" * 64, 3, "none", commit="h2", base="b1")
        assert other.fresh and other.use_number == 2
