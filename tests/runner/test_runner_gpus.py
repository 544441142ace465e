"""``model.gpus``: the grant (operator's GPUs against the model's request) and the device
request that reaches the real Docker daemon. No GPU exists on the test machines: that the
NVIDIA runtime turns the request into devices cannot be tested here."""

from __future__ import annotations

import pytest

from easeml_buildbot import gpus
from easeml_buildbot.runner.base import BoundedLog, Limits, ModelError
from easeml_buildbot.runner.docker_runner import DockerRunner, TAG_LABEL
from easeml_buildbot.runner.workspace import Workspace
from support.models import BUSYBOX_IMAGE


def test_requests_and_offers_parse():
    assert gpus.parse_request(None) == 0 and gpus.parse_request(2) == 2
    assert gpus.parse_request("all") == gpus.ALL and gpus.parse_request(" ALL ") == gpus.ALL
    for bad in (-1, 1.5, True, "two", "", 10_000):
        with pytest.raises(ValueError, match="number of GPUs"):
            gpus.parse_request(bad)
    assert gpus.parse_offer("4") == 4 and gpus.parse_offer("") == 0 and gpus.parse_offer(None) == 0
    with pytest.raises(ValueError, match="EASEML_WORKER_GPUS"):
        gpus.parse_offer("all")  # a worker says how many it has
    assert gpus.satisfies(2, 2) and not gpus.satisfies(1, 2)
    assert gpus.satisfies(1, gpus.ALL) and not gpus.satisfies(0, gpus.ALL)


def test_device_request_construction():
    assert gpus.device_requests(0) == []
    (req,) = gpus.device_requests(2)
    assert req["Count"] == 2 and req["Capabilities"] == [["gpu"]] and req["Driver"] == ""
    (req,) = gpus.device_requests(gpus.ALL)
    assert req["Count"] == -1  # `docker run --gpus all`


def test_limits_grant_gpus_only_when_asked_and_available():
    worker = Limits.from_env({"EASEML_WORKER_GPUS": "2"})
    assert worker.gpus == 2
    assert worker.lowered_by({}).gpus == 0  # a model sees no GPU unless it asks
    assert worker.lowered_by({"gpus": 1}).gpus == 1
    assert worker.lowered_by({"gpus": "all"}).gpus == gpus.ALL
    assert worker.lowered_by({"gpus": "all"}).lowered_by({"gpus": "all"}).gpus == gpus.ALL
    with pytest.raises(ModelError, match=r"asks for 3 GPUs; this worker has 2") as exc:
        worker.lowered_by({"gpus": 3})
    assert exc.value.cause == "bad_model_config"
    with pytest.raises(ModelError, match="model.gpus"):
        Limits().lowered_by({"gpus": "many"})
    with pytest.raises(ModelError, match="asks for every GPU"):
        Limits().lowered_by({"gpus": "all"})


@pytest.mark.parametrize("granted, expected", [(0, None), (1, 1), (gpus.ALL, -1)])
def test_run_sends_the_device_request_to_dockerd(docker_client, tmp_path, monkeypatch, granted, expected):
    """The container the runner creates on the real daemon carries the device request
    (read back from the daemon's own record of the container)."""
    runner = DockerRunner(docker_client)
    seen = []
    from docker.models.containers import ContainerCollection

    real_create = ContainerCollection.create

    def create(self, *args, **kwargs):
        c = real_create(self, *args, **kwargs)
        if (kwargs.get("labels") or {}).get("easeml.runner") == "model":  # not the output keeper
            seen.append(docker_client.api.inspect_container(c.id)["HostConfig"].get("DeviceRequests"))
        return c

    features = tmp_path / "features.csv"
    features.write_text("x\n1\n")
    ws = Workspace.create(features, prefix="easeml-gpu-test-", n_rows=1)
    tag = f"gpu-test-{tmp_path.name}"
    monkeypatch.setattr(ContainerCollection, "create", create)
    try:
        try:
            runner.run(BUSYBOX_IMAGE, ws, limits=Limits(gpus=granted), log_out=BoundedLog(1000), tag=tag)
            started = True
        except ModelError as exc:
            # no NVIDIA runtime here: dockerd refuses to start a container that wants GPUs
            assert expected is not None and exc.cause == "crash", exc
            assert 'could not select device driver "" with capabilities: [[gpu]]' in exc.message
            started = False
    finally:
        monkeypatch.undo()
        ws.remove()
    assert seen, "no container was created"
    if expected is None:
        assert not seen[0] and started
    else:
        assert [(r["Count"], r["Capabilities"]) for r in seen[0]] == [(expected, [["gpu"]])]
    left = docker_client.containers.list(all=True, filters={"label": f"{TAG_LABEL}={tag}"})
    assert not left, "the runner left its container behind"
