"""A test set stored sorted by class, evaluated by a real master and worker: the verdict and
estimate recorded in the ledger are those of the service's row order (a random subset in a
random order, custody/rows.py), not of the first N rows of the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from easeml_buildbot.custody.dataset import dataset_id, decrypted_dataset, encrypt_dataset
from easeml_buildbot.custody.ledger import Ledger
from easeml_buildbot.estimator import decide
from support.github_sim_world import require_worker_cli
from support.local_forge import local_forge_master
from support.models import DATASET_PATH, make_model_repo
from support.models import test_set_csv as csv_text

pytestmark = pytest.mark.e2e

CONDITION = "n > 0.8 +/- 0.1"


def test_sorted_test_set_is_scored_in_the_service_row_order(tmp_path, service_keys):
    require_worker_cli()
    repo = make_model_repo(tmp_path / "repo", public_key=service_keys.public, quality=0.8,
                           condition=CONDITION, reliability=0.95, adaptivity="full", steps=4)
    # the owner re-encrypts the same test set stored sorted by class
    order = np.argsort(repo.split.y_test, kind="stable")
    x, y = repo.split.x_test[order], repo.split.y_test[order]
    plain = tmp_path / "sorted.csv"
    plain.write_text(csv_text(x, y))
    enc = tmp_path / "sorted.csv.gpg"
    ds_id = encrypt_dataset(service_keys.public, plain, enc)
    plain.unlink()
    repo.commit_files({DATASET_PATH: enc.read_bytes()}, branch="main", message="test set sorted by class")
    ledger_url = f"sqlite:///{tmp_path}/ledger.sqlite"
    with local_forge_master(tmp_path / "bb", repo, service_keys, ledger_url=ledger_url) as bb:
        bb.wait_first_poll()
        head = repo.commit_model(quality=0.9, branch="main", message="new model")
        (b1,) = bb.wait_for_builds(1, timeout=120)
        props = bb.build_properties(b1["buildid"])
        assert props["easeml_status"] == "evaluated", bb.master_log()[-5000:]
        assert props["easeml_dataset_id"] == ds_id == dataset_id(enc)
    with Ledger(ledger_url) as led:
        (use,) = [u for u in led.uses("demo/models", ds_id) if u.state == "committed"]
    result = use.result if isinstance(use.result, dict) else json.loads(use.result)
    verdict = result.get("verdict", result)
    n = int(verdict["samples_used"])
    assert n < len(y)
    # the service's rows: what decrypted_dataset gives an n-row evaluation
    with decrypted_dataset(enc, service_keys.private, rows=n) as ds:
        used, labels = ds.source_rows, ds.labels
    assert used.tolist() != list(range(n)) and np.array_equal(labels, y[used])
    preds = head.predictions[order]  # the head model's prediction for each sorted-file row
    expected = decide(CONDITION, labels, preds[used], reliability=0.95, adaptivity="full", steps=4,
                      mode="fp-free")
    assert verdict["estimates"]["n"] == pytest.approx(expected.estimates["n"])
    assert verdict["outcome"] == expected.outcome
    first_n = float(np.mean(preds[:n] == y[:n]))  # what the old first-N-rows rule would score
    assert verdict["estimates"]["n"] != pytest.approx(first_n)
