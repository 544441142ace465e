"""End to end, a realistic model repository (tests/fixtures/sklearn_repo: a scikit-learn
pipeline with a pinned requirements.txt installed by ``RUN pip install`` through the
operator's egress proxy) evaluated by the real master, worker, Docker daemon and squid:
a first pull request (cold: apt + pip + model) and a second one that changes only the
weights (warm once the layer cache reuses the dependency layers). Each verdict must match
the model's true accuracy on the hidden test set, and each evaluation spends one use."""

from __future__ import annotations

import uuid

import pytest

from support import squid
from support.dockerd import docker_unavailable
from support.github_sim import fixtures_available
from support.github_sim_world import require_worker_cli, start_world
from support.models import DEFAULT_BASE_IMAGE
from support.sklearn_repo import make_sklearn_repo

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

DOMAINS = ("pypi.org", "files.pythonhosted.org", "deb.debian.org")


@pytest.fixture(scope="module")
def world(tmp_path_factory, service_keys):
    reason = fixtures_available() or docker_unavailable(DEFAULT_BASE_IMAGE) or squid.unavailable()
    if reason:
        pytest.skip(reason)
    require_worker_cli()
    with squid.SquidEgress(domains=DOMAINS) as route:
        w, stop = start_world(tmp_path_factory.mktemp("egr"), service_keys, workers=1, runner="docker",
                              worker_env=route.env)
        try:
            yield w, route
        finally:
            stop()


def _seconds(build: dict) -> float:
    return float(build["complete_at"]) - float(build["started_at"])


def test_sklearn_repository_cold_and_warm(world):
    from easeml_buildbot.custody.ledger import Ledger

    w, route = world
    repo = make_sklearn_repo(w.base / "repos" / "sklearn", public_key=w.keys.public,
                             ca_file=squid.HOST_CA_BUNDLE, run_label=uuid.uuid4().hex)
    good = repo.commit_weights("pr-1", rows=2000, message="train on all rows")
    bad = repo.commit_weights("pr-2", rows=2000, shuffle_labels=True, message="retrain (label bug)")
    assert good.accuracy > 0.9 and bad.accuracy < 0.6  # far from 0.8 +/- 0.05 either way

    w.send("pull_request", w.pr_payload("sklearn", repo, 1, good.sha))
    w.wait_completed("sklearn", timeout=900)
    assert w.statuses("sklearn")[-1][1:] == ("completed", "success"), w.bb.master_log()[-6000:]
    w.send("pull_request", w.pr_payload("sklearn", repo, 2, bad.sha, title="retrained"))
    w.wait_completed("sklearn", count=2, timeout=900)
    assert w.statuses("sklearn")[-1][1:] == ("completed", "failure"), w.bb.master_log()[-6000:]

    led = Ledger(w.ledger_url)
    try:
        state = led.state("acme/sklearn", repo.dataset_id)
        assert state is not None and state.remaining == 2  # 4 steps, two evaluations
    finally:
        led.close()
    # the dependencies came through the proxy, from the allowed domains only
    access = route.access_log()
    assert "CONNECT files.pythonhosted.org:443" in access and "TCP_DENIED" not in access, access[-3000:]
    builds = sorted(w.bb.api("builds", complete="true"), key=lambda b: b["buildid"])[-2:]
    for label, b in zip(("first PR (cold)", "second PR (weights only)"), builds):
        steps = [st for st in w.bb.steps(b["buildid"]) if st.get("complete_at")]
        log = w.bb.step_logs_text(b["buildid"])
        per_step = ", ".join(f"{st['name']} {_seconds(st):.0f}" for st in steps)
        print(f"\nsklearn repository through the master, {label}: build {_seconds(b):.1f} s "
              f"({per_step}); "
              f"image steps from the layer cache: {log.count('Using cache')}")
    assert w.sim.errors() == []
