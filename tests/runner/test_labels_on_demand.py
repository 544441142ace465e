"""Labels on demand end to end: ``easeml worker evaluate`` (process runner) on a test set of
features and row ids, the ledger, the master's RecordResult step and the owners' mail.

One repository, one pull request: the first evaluation runs both models and asks for the
labels of the rows where they disagree (their ids reach the master-private result, the ledger
and the owners' mail, never the build log, the check run or the author); the owners commit the
labels (encrypted) on the default branch; the re-evaluation of the same (head, base) decides
on the planned rows exactly as a fully labelled test set would, and the use is counted once.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from easeml_buildbot.config import parse_config
from easeml_buildbot.custody.dataset import decrypted_dataset, encrypt_dataset
from easeml_buildbot.custody.ledger import Ledger
from easeml_buildbot.estimator.decision import decide
from support.models import make_model_repo
from support.step_driver import drive_step

CONDITION = "d < 0.4 +/- 0.1 /\\ n - o > 0.0 +/- 0.1"
OWNER, AUTHOR = "owner@example.com", "dev@example.com"


def easeml(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "easeml_buildbot", *args], capture_output=True, text=True,
                          timeout=300)


def _encrypt(public: Path, text: str, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="easeml-plain-") as tmp:
        plain = Path(tmp) / out.name.removesuffix(".gpg")
        plain.write_text(text)
        out.parent.mkdir(parents=True, exist_ok=True)
        encrypt_dataset(public, plain, out)


@pytest.fixture(scope="module")
def lod(tmp_path_factory, service_keys):
    """A repository whose default branch holds a features + id test set and `labels:`."""
    repo = make_model_repo(tmp_path_factory.mktemp("lod") / "repo", public_key=service_keys.public,
                           quality=0.8, condition=CONDITION, reliability=0.99, adaptivity="none", steps=4,
                           email=(OWNER,),
                           extra_config={"labels": "data/labels.csv.gpg", "id_column": "rid"})
    ids = np.asarray([f"row-{secrets.token_hex(5)}" for _ in range(repo.n_test)])
    x = repo.split.x_test
    lines = [",".join([f"f{i}" for i in range(x.shape[1])] + ["rid"])]
    lines += [",".join(f"{v:g}" for v in row) + f",{rid}" for row, rid in zip(x, ids)]
    _encrypt(service_keys.public, "\n".join(lines) + "\n", repo.path / "data/test.csv.gpg")
    base = repo.commit_files({"data/test.csv.gpg": (repo.path / "data/test.csv.gpg").read_bytes()},
                             message="features and row ids only")
    pr = repo.commit_model(quality=0.95, branch="pr-lod", start=base)
    cfg = parse_config(subprocess.run(["git", "-C", str(repo.path), "show", f"{base}:.easeml.yml"],
                                      capture_output=True, text=True, check=True).stdout)
    plan = cfg.required_samples()
    with decrypted_dataset(repo.path / "data/test.csv.gpg", service_keys.private, label_column="rid",
                           rows=plan.rows) as ds:
        used = ds.source_rows
    return dict(repo=repo, base=base, pr=pr, ids=ids, used=used, plan=plan, cfg=cfg)


def _evaluate(lod, service_keys, tmp_path, config_rev):
    out = tmp_path / f"result-{secrets.token_hex(3)}.json"
    res = easeml("worker", "evaluate", "--repo", str(lod["repo"].path), "--head", lod["pr"].sha,
                 "--base", lod["base"], "--config-rev", config_rev, "--key", str(service_keys.private),
                 "--runner", "process", "--cache-dir", str(tmp_path / "cache"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text()), res.stdout + res.stderr


def _record(tmp_path, ledger_url, use_id, result, adaptivity="none"):
    """The real RecordResult step on the worker's result.json (a stand-in build around it)."""
    results = tmp_path / "results"
    results.mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "easeml-out").mkdir(exist_ok=True)  # the stand-in worker's ../easeml-out
    (tmp_path / "easeml-out" / "result.json").write_text(json.dumps(result))
    out = drive_step("RecordResult", ledger_url, {"buildername": "easeml", "buildnumber": 9, "easeml_use_id": use_id,
                                                  "easeml_adaptivity": adaptivity}, results_dir=results)
    assert out["error"] is None, out
    return out


def test_labels_on_demand_end_to_end(lod, service_keys, tmp_path):
    from easeml_buildbot.master import mail as em
    from easeml_buildbot.master.status import outcome_for

    repo, pr, ids, used, plan = lod["repo"], lod["pr"], lod["ids"], lod["used"], lod["plan"]
    ledger_url = f"sqlite:///{tmp_path}/ledger.sqlite"
    led = Ledger(ledger_url)
    ds_id = subprocess.run([sys.executable, "-m", "easeml_buildbot", "dataset", "id",
                            str(repo.path / "data/test.csv.gpg")], capture_output=True, text=True).stdout.split()[-1]
    r = led.reserve(repo.path.name, ds_id, 4, "none", commit=pr.sha, base=lod["base"])

    # 1. first evaluation: no labels file yet -> the ids of the disagreeing rows, nothing else
    first, log = _evaluate(lod, service_keys, tmp_path, lod["base"])
    differ = pr.predictions[used] != repo.base.predictions[used]
    want = [str(i) for i in ids[used][differ]]
    assert first["status"] == "labels_needed" and first["spent"] is True and first["scored"] is False
    need = first["labels_needed"]
    assert need["ids"] == want and need["count"] == len(want) == need["disagreements"] > 0
    assert need["rows"] == plan.rows
    assert f"{len(want)} of the {len(want)} rows" in first["message"] and "data/labels.csv.gpg" in first["message"]
    assert not any(i in log for i in ids)  # the developer-visible build log: no id, no count
    assert f" {len(want)} " not in log

    # 2. the master records it: the use waits (spent, once); the public side shows nothing new
    rec = _record(tmp_path, ledger_url, r.use_id, first)
    assert rec["props"]["easeml_status"] == "evaluated" and "easeml_awaiting_labels" not in rec["props"]
    public = json.dumps(rec["props"]) + " ".join(rec["notes"])
    assert not any(i in public for i in ids) and "label" not in public
    use = led.use(r.use_id)
    assert use.state == "awaiting_labels" and use.result["labels_needed"]["ids"] == want
    assert led.state(repo.path.name, ds_id).uses == 1
    check = outcome_for({"properties": {k: (v, "easeml") for k, v in rec["props"].items()}, "results": 0})
    assert check.title == "Evaluated; results were sent to the owners"  # as any verdict under `none`

    # 3. mail: the owners get every id (text + CSV), the pull request's author gets nothing
    facts = em.BuildFacts(repo=repo.path.name, sha=pr.sha, status="evaluated", results=0, dataset_id=ds_id,
                          use_id=r.use_id, owners=(OWNER,), author=AUTHOR)
    mails = em.plan_mails(facts, em.MailPolicy(ledger_url=ledger_url, allowed_domains=("example.com",)))
    assert [(m.kind, m.recipients) for m in mails] == [("labels", (OWNER,))]
    body = mails[0].message.as_string()
    att = [p for p in mails[0].message.iter_attachments() if p.get_filename() == "labels-needed.csv"][0]
    rows = list(csv.reader(io.StringIO(att.get_content())))
    assert rows[0] == ["rid", "label"] and [row[0] for row in rows[1:]] == want
    assert want[0] in body

    # 4. a re-run before the labels are in: the same use, still waiting
    again = led.reserve(repo.path.name, ds_id, 4, "none", commit=pr.sha, base=lod["base"])
    assert (again.use_id, again.fresh, again.state) == (r.use_id, False, "awaiting_labels")

    # 5. owners label all but one row: refused, naming file and count
    truth = {str(ids[i]): int(repo.labels[i]) for i in range(len(ids))}
    def commit_labels(chosen):
        text = "rid,label\n" + "".join(f"{i},{truth[i]}\n" for i in chosen)
        _encrypt(service_keys.public, text, repo.path / "data/labels.csv.gpg")
        return repo.commit_files({"data/labels.csv.gpg": (repo.path / "data/labels.csv.gpg").read_bytes()},
                                 message="owners' labels")
    partial = commit_labels(want[1:])
    short, _ = _evaluate(lod, service_keys, tmp_path, partial)
    assert short["status"] == "labels_needed" and short["labels_needed"]["ids"] == want[:1]
    assert short["cached"] == {"head": True, "base": True}  # the same look, the same use
    assert short["message"].startswith(f"data/labels.csv.gpg: 1 of the {len(want)} rows")

    # 6. every disagreeing row labelled (plus some others): the verdict of a fully labelled set
    complete = commit_labels(want + [str(i) for i in ids[used][~differ][:5]])
    second, log2 = _evaluate(lod, service_keys, tmp_path, complete)
    assert second["status"] == "scored", second
    v = second["verdict"]
    full = decide(CONDITION, repo.labels[used], pr.predictions[used], repo.base.predictions[used],
                  reliability=0.99, adaptivity="none", steps=4, mode="fp-free", plan=plan)
    assert v["outcome"] == full.outcome == "pass"
    assert [c["interval"] for c in v["clauses"]] == [list((c.lower, c.upper)) for c in full.clauses]
    assert [c["technique"] for c in v["clauses"]] == ["binomial", "paired+active"]
    assert v["labels_consumed"] == len(want) + 5 and v["samples_used"] == plan.rows
    assert not any(i in log2 for i in ids)
    rec2 = _record(tmp_path, ledger_url, r.use_id, second)
    assert rec2["result"] == 0
    use = led.use(r.use_id)
    st = led.state(repo.path.name, ds_id)
    assert use.state == "committed" and use.verdict == "pass"
    assert (st.uses, st.committed, st.reservations, st.awaiting_labels) == (1, 1, 1, 0)
    # the final record keeps counts, not the ids
    assert "ids" not in use.result["labels_on_demand"] and not any(i in json.dumps(use.result) for i in ids)
    led.close()


def test_awaiting_labels_shows_a_neutral_pending_check_under_full(lod, tmp_path):
    """Under an adaptivity that shows verdicts the check run says the verdict is pending,
    with no count and no id (the adaptivity `none` case is in the test above)."""
    led = Ledger(f"sqlite:///{tmp_path}/l.sqlite")
    r = led.reserve("acme/m", "b" * 64, 4, "full", commit="h", base="b")
    result = {"status": "labels_needed", "spent": True, "scored": False,
              "labels_needed": {"ids": ["row-x", "row-y"], "count": 2}}
    rec = _record(tmp_path, f"sqlite:///{tmp_path}/l.sqlite", r.use_id, result, adaptivity="full")
    from easeml_buildbot.master.status import outcome_for

    check = outcome_for({"properties": {k: (v, "easeml") for k, v in rec["props"].items()}, "results": 0})
    assert check.conclusion == "neutral" and "owners have added labels" in check.title
    assert "row-x" not in check.summary and " 2 " not in check.summary
    assert led.use(r.use_id).state == "awaiting_labels"
    led.close()


def test_the_rerun_continues_the_waiting_use(tmp_path):
    """The real ReserveUse step: a build of a (head, base) whose use waits for labels gets that
    use (nothing new spent, no waiting for a "twin"); a new head gets a new use."""
    url = f"sqlite:///{tmp_path}/l.sqlite"
    with Ledger(url) as led:
        r = led.reserve("acme/m", "d" * 64, 4, "none", commit="h1", base="b1")
        led.await_labels(r.use_id, {"status": "labels_needed", "labels_needed": {"ids": ["x"]}})
    got = drive_step("ReserveUse", url, {"buildername": "easeml", "buildnumber": 3, "easeml_repo": "acme/m",
                                         "easeml_dataset_id": "d" * 64, "easeml_steps": 4,
                                         "easeml_adaptivity": "none", "revision": "h1", "easeml_base_sha": "b1"},
                     build_timeout=60, timeout=60)
    assert got["error"] is None, got
    assert got["result"] == 0 and got["props"]["easeml_use_id"] == r.use_id
    assert "no new use spent" in got["notes"][-1] and "label" not in " ".join(got["notes"])
    with Ledger(url) as led:
        st = led.state("acme/m", "d" * 64)
        assert (st.uses, st.reservations, st.awaiting_labels) == (1, 1, 1)
