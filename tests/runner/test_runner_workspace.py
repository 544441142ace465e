"""The run directory: a private copy of the features, an empty output, row counts."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from easeml_buildbot.runner.workspace import Workspace, count_rows


def mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def test_workspace_layout_and_removal(tmp_path, monkeypatch):
    monkeypatch.setenv("EASEML_RUN_DIR", str(tmp_path / "runs"))
    src = tmp_path / "feats.csv"
    src.write_text("a,b\n1,2\n3,4\n")
    ws = Workspace.create(src, prefix="t-")
    assert ws.root.parent == tmp_path / "runs"
    assert ws.features.name == "features.csv" and ws.features.read_text() == src.read_text()
    assert (mode(ws.root), mode(ws.features), mode(ws.output)) == (0o700, 0o444, 0o777)
    assert list(ws.output.iterdir()) == [] and ws.n_rows == 2
    assert Workspace.create(src, prefix="t-", n_rows=7).n_rows == 7  # the caller's count wins
    (ws.output / "sub").mkdir(mode=0o500)  # a model may leave an unremovable-looking dir
    ws.remove()
    assert not ws.root.exists()


def test_count_rows(tmp_path):
    (tmp_path / "a.csv").write_text('x,y\n1,"multi\nline"\n\n2,3\n')
    assert count_rows(tmp_path / "a.csv") == 2
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n\n{"x": 2}\n{"x": 3}\n')
    assert count_rows(tmp_path / "a.jsonl") == 3
    np.savez(tmp_path / "a.npz", X=np.zeros((7, 2)))
    assert count_rows(tmp_path / "a.npz") == 7
    with pytest.raises(ValueError, match="unknown features format"):
        count_rows(tmp_path / "a.parquet")
