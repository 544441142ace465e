"""Every file the master takes from a worker is bounded (a worker's upload lands in the
master's memory and disk)."""

from __future__ import annotations

from buildbot.steps.transfer import FileUpload


def test_every_upload_from_a_worker_has_a_maxsize(tmp_path):
    from easeml_buildbot.master.factory import INSPECT_MAX_BYTES, RESULT_MAX_BYTES, make_factory
    from easeml_buildbot.master.settings import Settings

    settings = Settings.from_dict({"forge": "local", "local": {"repo": "/x"},
                                   "results_dir": str(tmp_path / "results")})
    uploads = [f for f in make_factory(settings).steps if issubclass(f.step_class, FileUpload)]
    sizes = {f.kwargs["name"]: f.kwargs.get("maxsize") for f in uploads}
    assert sizes == {"collect result": RESULT_MAX_BYTES}
    assert INSPECT_MAX_BYTES <= 1 << 20 and 2 << 20 <= RESULT_MAX_BYTES <= 16 << 20


def test_read_config_reads_the_inspection_from_the_worker_bounded():
    """``read config`` reads inspect.json itself (no upload step): through Buildbot's
    ``uploadFile`` worker command with a maxsize, into memory."""
    from twisted.internet import defer

    from easeml_buildbot.master.factory import INSPECT_MAX_BYTES, OUT
    from easeml_buildbot.master.gpus import ReadConfig

    asked = []

    class Probe(ReadConfig):
        def read_worker_json(self, workersrc, maxsize):
            asked.append((workersrc, maxsize))
            return defer.succeed({"ok": True})

    step = Probe(settings=None).get_step_factory().buildStep()  # the instance a build runs
    assert step.inspection().result == {"ok": True} and step.inspection().result == {"ok": True}
    assert asked == [(f"{OUT}/inspect.json", INSPECT_MAX_BYTES)]  # once per build, bounded
