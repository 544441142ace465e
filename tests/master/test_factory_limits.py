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
    # read config and record result read their JSON themselves (bounded: the tests below),
    # so no step uploads a file to the master's disk
    assert uploads == []
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


def test_record_result_reads_the_result_from_the_worker_bounded_a_lost_worker_is_retried():
    """``record result`` reads result.json itself (no 'collect result' step): ``uploadFile``
    into memory with a maxsize. A worker lost while it is read raises, so the build is
    RETRY (Buildbot's ``ConnectionLost``: the retry settles the use, as after any lost step);
    a read that fails otherwise is no result (the use is then counted without a verdict)."""
    from twisted.internet import defer, error

    from easeml_buildbot.master.factory import OUT, RESULT_MAX_BYTES
    from easeml_buildbot.master.steps import RecordResult

    asked = []

    class Probe(RecordResult):
        answer = defer.succeed({"status": "scored"})

        def read_worker_json(self, workersrc, maxsize):
            asked.append((workersrc, maxsize))
            return self.answer

        def getProperty(self, name, default=None):
            return default

    step = Probe(settings=None).get_step_factory().buildStep()
    assert step.collect_result().result == {"status": "scored"}
    assert asked == [(f"{OUT}/result.json", RESULT_MAX_BYTES)]
    step.answer = defer.fail(OSError("unreadable"))
    assert step.collect_result().result is None
    step.answer = defer.fail(error.ConnectionLost("worker lost"))
    lost = []
    step.collect_result().addErrback(lost.append)
    assert [f.check(error.ConnectionLost) for f in lost] == [error.ConnectionLost]


def test_outcome_reads_the_head_commits_author_only_when_no_inspection_did():
    """No hidden 'head commit author' step: the outcome step asks the worker for ``git log
    -1 --format=%ae HEAD`` itself, without a log, only when the property is missing, and
    takes one address (no whitespace), nothing else."""
    from twisted.internet import defer

    from easeml_buildbot.master.factory import make_factory
    from easeml_buildbot.master.settings import Settings
    from easeml_buildbot.master.steps import Finalize

    settings = Settings.from_dict({"forge": "local", "local": {"repo": "/x"}, "results_dir": "/tmp/easeml-r"})
    names = [getattr(f.step_class, "name", None) for f in make_factory(settings).steps]
    assert "head commit author" not in names and names[-1] == "outcome", names
    ran, props = [], {}

    class Probe(Finalize):
        answer = ("dev@example.com\n", 0)

        def getProperty(self, name, default=None):
            return props.get(name, default)

        def setProperty(self, name, value, source, runtime=True):
            props[name] = value

        def runCommand(self, cmd):
            ran.append((cmd.remote_command, cmd.command, sorted(cmd.logs)))
            cmd.stdout, cmd.rc = self.answer
            return defer.succeed(None)

    step = Probe(settings=None).get_step_factory().buildStep()
    step.build = type("B", (), {"conn": object(), "workdir": "build"})()
    step.head_author()
    assert ran == [("shell", ["git", "log", "-1", "--format=%ae", "HEAD"], [])]
    assert props["easeml_author_email"] == "dev@example.com"
    step.head_author()  # known now: no second command
    assert len(ran) == 1
    for answer in (("two words\n", 0), ("dev@example.com\n", 128), ("", 0)):
        props.clear()
        step.answer = answer
        step.head_author()
        assert "easeml_author_email" not in props, answer
