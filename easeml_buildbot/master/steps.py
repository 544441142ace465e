"""Master-side build steps: the parts of an evaluation that must not run on a worker.

Why on the master: the ledger of test-set uses is the master's (workers hold only the
decryption key), and result.json is read here from a master-private directory so that
accuracies never enter step logs or build properties (the Buildbot UI may be visible to
developers). Ledger calls block (SQLAlchemy) and run through ``deferToThread``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, reactor, task, threads
from twisted.python import log

from buildbot.process import buildstep, remotecommand, remotetransfer
from buildbot.process.results import EXCEPTION, FAILURE, SKIPPED, SUCCESS, WARNINGS

from easeml_buildbot.master.service import easeml_service
from easeml_buildbot.master import outcome as eo
from easeml_buildbot.master.accepted import get_accepted, set_accepted

def evaluating(step: buildstep.BuildStep) -> bool:
    """doStepIf: nothing has decided the build's outcome yet."""
    return not step.build.getProperty("easeml_status")


def has_open_use(step: buildstep.BuildStep) -> bool:
    return bool(step.build.getProperty("easeml_use_id")) and not step.build.getProperty("easeml_use_closed")


def head_revision(props: Any) -> str | None:
    """The commit under evaluation: what the checkout got, else what was asked for."""
    return props.getProperty("got_revision") or props.getProperty("revision")


def private_path(results_dir: str, build_props: Any, name: str) -> str:
    return os.path.join(results_dir, f"{build_props.getProperty('buildername')}-"
                                     f"{build_props.getProperty('buildnumber')}-{name}")


def _cfg(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if cfg.get(n) not in (None, ""):
            return cfg[n]
    return default


def _facts(build: Any) -> dict[str, Any]:
    """The build's in-memory record of what the ledger answered and why it ended; read once
    by ``Finalize`` into the typed outcome (never a build property itself)."""
    facts = getattr(build, "easeml_facts", None)
    if facts is None:
        facts = build.easeml_facts = {}
    return facts


class _MasterStep(buildstep.BuildStep):
    """A BuildStep that runs on the master and writes a short, secret-free log.

    ``self.summary`` (set by ``run``) is the step's line in the Buildbot UI: what it did in a
    few words, never more than the developer may read (the UI is public)."""

    summary: str | None = None

    def __init__(self, settings: Any, **kwargs: Any) -> None:
        self.settings = settings
        kwargs.setdefault("updateBuildSummaryPolicy", False)  # only Finalize writes the build's line
        super().__init__(**kwargs)

    def ledger(self):
        """Deferred: the master's Ledger (``EasemlService``), opened in a thread on first use."""
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), easeml_service(self.master).ledger)

    def getResultSummary(self) -> dict[str, str]:
        if not self.summary:
            return super().getResultSummary()
        return {"step": self.build.properties.cleanupTextFromSecrets(self.summary)
                if self.build is not None else self.summary}

    def ledger_answer(self, state: Any = None, **use: Any) -> None:
        """Remember the ledger's answer (a LedgerEntry or Reservation, and the use's state)."""
        facts = _facts(self.build)
        if state is not None:
            for name in ("remaining", "budget", "use_number", "retired"):
                value = getattr(state, name, None)
                if value is not None:
                    facts["uses_left" if name == "remaining" else name] = value
        facts.update({k: v for k, v in use.items() if v is not None})

    @defer.inlineCallbacks
    def note(self, text: str):
        if not hasattr(self, "_note_log"):
            self._note_log = yield self.addLog("easeml")
        yield self._note_log.addStdout(text.rstrip("\n") + "\n")

    def status(self, status: str, cause: str = "", kind: str | None = None) -> None:
        self.setProperty("easeml_status", status, "easeml")
        _facts(self.build)["kind"] = eo.kind_for(status, kind)
        if cause:
            self.setProperty("easeml_cause", cause[:4000], "easeml")

    @defer.inlineCallbacks
    def read_worker_json(self, workersrc: str, maxsize: int):
        """A JSON document the worker wrote (relative to the build's workdir), read into memory
        with Buildbot's own ``uploadFile`` worker command, at most ``maxsize`` bytes: no
        step of its own, no copy on the master's disk. None when it is missing, larger or
        not JSON. A lost worker raises, as any remote command (the build is retried)."""
        writer = remotetransfer.StringFileWriter()
        cmd = remotecommand.RemoteCommand(
            "uploadFile", {"workdir": self.workdir, "writer": writer, "maxsize": maxsize,
                           "blocksize": 32 * 1024, "workersrc": workersrc},
            decodeRC={None: SUCCESS, 0: SUCCESS})
        yield self.runCommand(cmd)
        if cmd.didFail():
            return None
        try:
            data = json.loads(writer.buffer)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def keep_private(self, name: str, data: dict[str, Any] | None) -> str | None:
        """Write ``data`` (a worker's JSON) to the master-private directory, owner-only; its
        path, or None (nothing to keep, or it cannot be written)."""
        if data is None:
            return None
        path = private_path(self.settings.results_dir, self.build, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
        except OSError as exc:
            log.msg(f"easeml: cannot keep {name} in {path}: {exc}")
            return None
        return path


@defer.inlineCallbacks
def resolve_base(step: buildstep.BuildStep):
    """Choose the accepted model ``o`` to compare against, before the checkout fetches and
    resolves it (``easeml_base_rev``) with the head in one worker command (master/checkout.py).

    A pull request names its base (``easeml_base_sha``); the local forge compares against the
    last accepted commit, else the parent. Returns the line the checkout step shows."""
    if step.getProperty("easeml_base_sha"):
        return f"base {str(step.getProperty('easeml_base_sha'))[:10]}"
    accepted = yield get_accepted(step.master, step.getProperty("easeml_repo"))
    if accepted:
        step.setProperty("easeml_base_rev", accepted["sha"], "easeml")
        what = "configuration commit" if accepted.get("configuration") else "commit"
        return f"base {accepted['sha'][:10]}, the last accepted {what} on {accepted['branch']}"
    step.setProperty("easeml_base_rev", f"{step.getProperty('revision')}^", "easeml")
    return "base: the parent commit (nothing accepted yet)"


@functools.lru_cache(maxsize=512)
def _plan(condition: str, reliability: Any, adaptivity: Any, steps: Any, method: Any,
          labelling: str) -> tuple[str | None, int | None, str | None]:
    """(plan as JSON, rows, None) or (None, None, why not): the plan of a configuration
    (cached: builds of one repository ask for the same plan; planning may take a while).
    The JSON is what ``easeml worker evaluate --plan`` reads (``SampleSize.from_dict``)."""
    from easeml_buildbot.estimator.samples import sample_size

    try:
        plan = sample_size(condition, reliability, adaptivity, steps, method, labelling=labelling)
    except ValueError as exc:
        return None, None, str(exc)
    return json.dumps(plan.to_dict(), separators=(",", ":")), int(plan.rows), None


def _plan_of(cfg: dict[str, Any]) -> tuple[str | None, int | None, str | None]:
    return _plan(str(cfg.get("condition")), cfg.get("reliability"), cfg.get("adaptivity"),
                 cfg.get("steps"), cfg.get("method"), "active" if cfg.get("labels") else "full")


def plan_inspection(data: dict[str, Any]) -> dict[str, Any]:
    """Fill ``samples_needed`` of an inspection made with ``--no-plan`` (blocking: in a
    thread). The answer is what the worker's own planning writes: on a planning error the
    inspection is not ok, with the error (and no dataset id), whatever followed."""
    cfg = data.get("config") or {}
    if data.get("samples_needed") is not None or not cfg or data.get("not_evaluated"):
        return data
    _, rows, err = _plan_of(cfg)
    if err is not None:
        return {**data, "ok": False, "dataset_id": None, "samples_needed": 0,
                "error": f"{cfg.get('source')}: condition: {err}"}
    return {**data, "samples_needed": rows}


_UNREAD = object()


def _planned(data: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """:func:`plan_inspection`, and the plan ``easeml worker evaluate --plan`` gets (its JSON,
    when the inspection's rows are that plan's and it is small enough to pass on), in one
    call (blocking: in a thread)."""
    data = plan_inspection(data)
    if data.get("samples_needed") is None:
        return data, None
    plan, rows, _ = _plan_of(data.get("config") or {})
    ok = plan is not None and rows == data["samples_needed"] and len(plan) <= PLAN_ARG_MAX
    return data, plan if ok else None


class ReadInspection(_MasterStep):
    """Read ``easeml worker inspect``'s JSON: config and dataset id come from the default
    branch's accepted commit (the local forge: the base). The plan (samples needed) is made
    here, on the master: see :func:`plan_inspection`."""

    name = "read config"
    _inspection: Any = _UNREAD

    @defer.inlineCallbacks
    def inspection(self):
        """The worker's ``inspect.json`` (None: none, or unreadable), read once."""
        if self._inspection is _UNREAD:
            from easeml_buildbot.master.factory import INSPECT_MAX_BYTES, OUT

            self._inspection = yield self.read_worker_json(f"{OUT}/inspect.json", INSPECT_MAX_BYTES)
        return self._inspection

    @defer.inlineCallbacks
    def run(self):
        data = yield self.inspection()
        if data is None:
            self.status("infra_error", "the worker produced no inspect.json")
            self.summary = "no inspection from the worker"
            return FAILURE
        data, plan = yield threads.deferToThread(_planned, data)
        from easeml_buildbot.master.factory import default_branch_ref

        ref = default_branch_ref(self.build)
        if ref is not None:
            if not data.get("config_rev"):  # the fetched default branch did not resolve
                self.status("infra_error", f"the default branch's head {ref} could not be resolved: "
                            f"{data.get('error') or 'no commit'}")
                yield self.note(f"could not resolve {ref}")
                self.summary = "the default branch could not be resolved"
                return FAILURE
            self.setProperty("easeml_config_sha", data["config_rev"], "easeml")
        if data.get("author_email"):
            self.setProperty("easeml_author_email", str(data["author_email"]), "easeml")
        cfg = data.get("config") or {}
        for prop, names in (("easeml_condition", ("condition_text", "condition")),
                            ("easeml_adaptivity", ("adaptivity",)),
                            ("easeml_reliability", ("reliability",)),
                            ("easeml_steps", ("steps",)),
                            ("easeml_mode", ("mode",)),
                            ("easeml_method", ("method",)),
                            ("easeml_email", ("email",)),
                            ("easeml_dataset_path", ("dataset",))):
            value = _cfg(cfg, *names)
            if value is not None:
                self.setProperty(prop, list(value) if isinstance(value, tuple) else value, "easeml")
        if data.get("samples_needed") is not None:
            self.setProperty("easeml_samples_needed", data["samples_needed"], "easeml")
            # the evaluation reuses this plan (``--plan``) instead of planning on the worker;
            # it is made from the configuration alone, which the developer can read anyway
            if plan is not None:
                self.setProperty("easeml_plan", plan, "easeml")
        if data.get("dataset_id"):
            self.setProperty("easeml_dataset_id", data["dataset_id"], "easeml")
        if data.get("not_evaluated"):
            # the default branch's configuration does not list the pull request's base: no
            # use is reserved, nothing is run; the check run says so (``status.outcome_for``)
            self.status("not_evaluated", data["not_evaluated"])
            yield self.note(data["not_evaluated"])
            self.summary = "not evaluated: the base branch is not tested"
            return SKIPPED
        changed = list(data.get("protected_changed") or [])
        self.setProperty("easeml_protected_changed", changed, "easeml")
        if changed:
            branch = self.getProperty("branch") or ""
            if self.settings.forge == "local" and branch == self.settings.local.branch:
                # the watched branch is the trusted default branch (only owners push there):
                # a commit on it that changes the configuration or the test set is a new
                # configuration, not a model to evaluate. It becomes the accepted commit, so
                # later commits are read against it; without this every later commit's diff
                # against the old accepted commit shows the same change, forever (issue 14).
                sha = head_revision(self)
                yield set_accepted(self.master, self.getProperty("easeml_repo"), sha, branch,
                                   configuration=True)
                self.status("protected_changed", "a configuration commit: " + ", ".join(changed)
                            + " changed; later commits are evaluated against it (not evaluated itself)")
                yield self.note(f"configuration commit {sha}: " + ", ".join(changed) + " changed; "
                                "it is now the accepted commit, its model was not evaluated")
                self.summary = "configuration commit: " + ", ".join(changed) + " changed"
                return WARNINGS
            self.status("protected_changed", "the pull request changes " + ", ".join(changed))
            yield self.note("protected files changed by the pull request: " + ", ".join(changed))
            self.summary = "protected files changed: " + ", ".join(changed)
            return WARNINGS
        if not data.get("ok"):
            err = data.get("error") or "unknown error"
            dataset = str(cfg.get("dataset") or "")
            if cfg and dataset and f":{dataset}:" in err:  # "<base>:<dataset>: no encrypted test set ..."
                self.status("missing_dataset", err, kind="dataset_missing")
                self.summary = "no encrypted test set"
            else:
                self.status("config_error", err, kind="config")
                self.summary = "configuration error"
            yield self.note(err)
            return FAILURE
        if not data.get("dataset_id"):
            self.status("missing_dataset", data.get("error") or "no encrypted test set on the base branch",
                        kind="dataset_missing")
            self.summary = "no encrypted test set"
            return FAILURE
        yield self.note(f"condition {self.getProperty('easeml_condition')!s}; adaptivity "
                        f"{self.getProperty('easeml_adaptivity')}; dataset {data['dataset_id'][:12]}; "
                        f"samples needed {data.get('samples_needed')}")
        cond = self.getProperty("easeml_condition")
        self.summary = " · ".join(str(x) for x in (
            eo.condition_text(cond) if cond else None,
            f"adaptivity {self.getProperty('easeml_adaptivity')}" if self.getProperty("easeml_adaptivity") else None,
            f"{data['samples_needed']} samples" if data.get("samples_needed") is not None else None) if x)
        return SUCCESS


#: a larger plan (a condition of very many clauses) is made again on the worker rather than
#: passed on to it (Linux caps one argument or environment string at 128 KiB)
PLAN_ARG_MAX = 32 * 1024

_OPEN_USES = ("easeml-open-uses", "easeml_buildbot.master.steps")
_LEDGER_GUARD = ("easeml-ledger", "easeml_buildbot.master.steps")
DUPLICATE_POLL = 1.0  # seconds between looks at a twin build's use


@defer.inlineCallbacks
def _open_use_slot(step: buildstep.BuildStep):
    """(state object id, key) remembering the use a build request holds while it runs.

    A worker lost mid-build stops the build before any master step can run, and Buildbot
    retries the same build request; the retry releases the lost attempt's use (no result
    reached anyone) before reserving its own. The key is cleared only after the ledger has
    the use's outcome, so a master killed in between leaves the retry a committed use, which
    it reports instead of spending another.
    """
    oid = yield step.master.db.state.getObjectId(*_OPEN_USES)
    return oid, f"buildrequest-{step.build.requests[0].id}"


def _testset_key(repo: str, dataset_id: str) -> str:
    digest = hashlib.sha256(f"{repo}\0{dataset_id}".encode()).hexdigest()[:40]
    return f"reservations-{digest}"


class LedgerGuard:
    """The ledger must be the one this service has been using, and not behind it.

    Buildbot's own database (``master.db.state``, shared by every master) keeps the ledger's
    ``instance_id`` (created with the ledger's schema) and, per test set, the highest
    reservation count the ledger has reported. A deleted or replaced ledger has another
    instance id; one restored from an old backup has fewer reservations than Buildbot saw.
    Either way the budgets it would hand out are not the real ones: refuse to evaluate.
    """

    def __init__(self, step: buildstep.BuildStep, led: Any) -> None:
        self.step, self.led = step, led

    @defer.inlineCallbacks
    def problem(self, repo: str, dataset_id: str):
        """None when the ledger may be used for (repo, dataset_id), else why not."""
        from easeml_buildbot.custody.ledger import LedgerError

        db = self.step.master.db.state
        try:
            instance = yield threads.deferToThread(self.led.instance_id)
        except LedgerError as exc:
            return f"the test-set ledger is unusable: {exc}"
        oid = yield db.getObjectId(*_LEDGER_GUARD)
        recorded = yield db.getState(oid, "instance_id", None)
        if recorded is None:  # the first evaluation of this service: adopt this ledger
            recorded = yield db.atomicCreateState(oid, "instance_id", lambda: instance)
        if recorded != instance:
            return (f"the test-set ledger is not the one this service has been using (its instance "
                    f"{instance[:12]}, Buildbot recorded {str(recorded)[:12]}): it was deleted, "
                    "replaced or re-created, so its budgets are not the real ones")
        seen = yield db.getState(oid, _testset_key(repo, dataset_id), 0)
        entry = yield threads.deferToThread(self.led.state, repo, dataset_id)
        have = entry.reservations if entry is not None else 0
        if have < int(seen or 0):
            return (f"the test-set ledger is behind: Buildbot has seen {seen} reservations of test set "
                    f"{dataset_id[:12]} of {repo}, the ledger holds {have} (restored from an old copy?)")
        return None

    @defer.inlineCallbacks
    def saw(self, repo: str, dataset_id: str, reservations: int):
        """Remember that the ledger reported ``reservations`` for the test set."""
        db = self.step.master.db.state
        oid = yield db.getObjectId(*_LEDGER_GUARD)
        key = _testset_key(repo, dataset_id)
        seen = yield db.getState(oid, key, 0)
        if int(reservations) > int(seen or 0):
            yield db.setState(oid, key, int(reservations))


class ReserveUse(_MasterStep):
    """Reserve one use of the test set in the ledger before any model sees it."""

    name = "reserve test-set use"

    @defer.inlineCallbacks
    def run(self):
        from easeml_buildbot.custody.ledger import (LedgerError, PolicyMismatch, TestSetExhausted,
                                                    TestSetRetired)

        led = yield self.ledger()
        repo, dataset = self.getProperty("easeml_repo"), self.getProperty("easeml_dataset_id")
        guard = LedgerGuard(self, led)
        problem = yield guard.problem(repo, dataset)
        if problem:
            log.msg(f"easeml: refusing to evaluate {repo}@{str(head_revision(self))[:12]}: {problem}")
            self.status("infra_error", problem + "; no use was handed out and nothing was evaluated. "
                        "The operator has been told; evaluations resume once the ledger is restored.")
            yield self.note(f"not evaluated: {problem}")
            self.summary = "the test-set ledger is unusable: not evaluated"
            return FAILURE
        oid, key = yield _open_use_slot(self)
        lost = yield self.master.db.state.getState(oid, key, None)
        if lost:
            yield self._settle_lost(led, lost)
            yield self.master.db.state.setState(oid, key, None)
        reused = yield self._reuse(led)
        if reused:
            return SUCCESS
        url = yield self.build.getUrl()
        kwargs = dict(repo=repo, dataset_id=dataset,
                      steps=int(self.getProperty("easeml_steps") or 1),
                      adaptivity=self.getProperty("easeml_adaptivity") or "none",
                      commit=head_revision(self), base=self.getProperty("easeml_base_sha"),
                      build=url, condition=str(self.getProperty("easeml_condition") or "") or None,
                      reliability=self.getProperty("easeml_reliability"),
                      mode=self.getProperty("easeml_mode"), method=self.getProperty("easeml_method"),
                      samples_needed=self.getProperty("easeml_samples_needed"))
        deadline = reactor.seconds() + max(int(getattr(self.settings, "build_timeout", 3600) or 3600), 60) * 2
        while True:
            try:
                r = yield threads.deferToThread(led.reserve, **kwargs)
            except PolicyMismatch as exc:
                # the promise changed for a test set already in use: a configuration problem,
                # fixed in .easeml.yml (or by rotating the test set); no use is spent
                self.status("config_error", str(exc), kind="config")
                yield self.note(f"not evaluated: {exc}")
                self.summary = "the condition changed for a test set in use: not evaluated"
                return FAILURE
            except (TestSetExhausted, TestSetRetired) as exc:
                self.status("exhausted", str(exc))
                self.setProperty("easeml_uses_left", 0, "easeml")
                self.ledger_answer(None, uses_left=0, retired=True)
                yield self.note(f"not evaluated: {exc}")
                self.summary = "test set exhausted: not evaluated"
                return WARNINGS
            yield guard.saw(repo, dataset, r.reservations)
            if r.fresh or r.state == "awaiting_labels":
                # awaiting_labels: this (head, base) already spent its use and waits for the
                # owners' labels (labels on demand): this build continues that use
                break
            use = yield self._await_twin(led, r.use_id, deadline)
            if use is None:
                self.status("infra_error", f"another build of this commit holds use {r.use_number} of the "
                            "test set and did not finish; nothing was evaluated here")
                yield self.note(f"gave up waiting for the build holding use {r.use_number}")
                self.summary = f"gave up waiting for use {r.use_number}"
                return FAILURE
            if use.state == "committed":
                yield self._report_existing(led, use, "another build of this commit against the same base "
                                                      "already holds a use")
                return SUCCESS
            # the twin gave its use back (nothing saw the features): reserve again
        yield self.master.db.state.setState(oid, key, r.use_id)
        self.setProperty("easeml_use_id", r.use_id, "easeml")
        self.setProperty("easeml_use_number", r.use_number, "easeml")
        self.setProperty("easeml_uses_left", r.remaining, "easeml")
        self.ledger_answer(r, use_state="reserved" if r.fresh else r.state)
        yield self.note(f"use {r.use_number} reserved (id {r.use_id}); {r.remaining} left after this one"
                        if r.fresh else f"use {r.use_number} of this commit continued (id {r.use_id}); "
                        "no new use spent")
        self.summary = (f"use {r.use_number} of {r.budget} reserved" if r.fresh
                        else f"use {r.use_number} of {r.budget} continued: no new use spent")
        return SUCCESS

    @defer.inlineCallbacks
    def _settle_lost(self, led, lost):
        """The earlier attempt of this build request held use ``lost``: give it back if it is
        still reserved (the worker was lost before a result); a committed one stays (the master
        died after recording it) and the reservation below reports it."""
        from easeml_buildbot.custody.ledger import LedgerError

        try:
            use = yield threads.deferToThread(led.use, lost)
        except LedgerError:
            return
        if use.state == "reserved":
            yield threads.deferToThread(led.release, lost, reason="the worker was lost before a result; retried")
            yield self.note(f"released use {use.use_number} of the earlier attempt (worker lost)")
        else:
            yield self.note(f"the earlier attempt's use {use.use_number} is already {use.state}")

    @defer.inlineCallbacks
    def _await_twin(self, led, use_id, deadline):
        """Wait (without blocking the reactor) until the twin build's use is committed or
        released; None when ``deadline`` passes first."""
        noted = False
        while True:
            use = yield threads.deferToThread(led.use, use_id)
            if use.state != "reserved":
                return use
            if not noted:
                yield self.note(f"another build of this commit against the same base holds use "
                                f"{use.use_number}; waiting for its result instead of spending a second use")
                noted = True
            if reactor.seconds() > deadline:
                return None
            yield task.deferLater(reactor, DUPLICATE_POLL, lambda: None)

    @defer.inlineCallbacks
    def _report_existing(self, led, use, why: str):
        """Report a committed use's recorded outcome again, spending nothing."""
        from easeml_buildbot.custody.policy import developer_may_see

        result = use.result or {}
        state = yield threads.deferToThread(led.state, use.repo, use.dataset_id)
        self.setProperty("easeml_use_id", use.id, "easeml")
        self.setProperty("easeml_use_closed", True, "easeml")
        self.setProperty("easeml_reused", True, "easeml")
        if result.get("samples_used") is not None:
            self.setProperty("easeml_samples_used", int(result["samples_used"]), "easeml")
        if state is not None:
            self.setProperty("easeml_uses_left", state.remaining, "easeml")
        self.ledger_answer(state, use_number=use.use_number, use_state=use.state, reused=True)
        if use.verdict in ("pass", "fail"):
            self.status("evaluated")
            self.build.easeml_outcome = use.verdict
            _facts(self.build).update(verdict=use.verdict, verdict_doc=result.get("verdict"))
            if developer_may_see(self.getProperty("easeml_adaptivity") or "none", use.verdict):
                self.setProperty("easeml_verdict", use.verdict, "easeml")
        else:  # spent without a verdict (the model failed after seeing the features)
            self.status(*_failure(result))
        yield self.note(f"{why} (use {use.use_number}); reporting its result, no new use spent")
        self.summary = f"use {use.use_number} already recorded: reported again, nothing spent"

    @defer.inlineCallbacks
    def _reuse(self, led):
        """A re-run of a commit already scored against the same base and test set reports the
        recorded result again instead of spending a use: a deterministic re-evaluation tells
        the developer nothing new, so it must not cost the test set anything.

        Uses recorded since the ledger keeps claims are found by ``reserve`` itself; this
        covers those recorded before (their base is in the result JSON)."""
        repo, dataset = self.getProperty("easeml_repo"), self.getProperty("easeml_dataset_id")
        head = head_revision(self)
        base = self.getProperty("easeml_base_sha")
        uses = yield threads.deferToThread(led.uses, repo, dataset, include_released=False)
        prior = [u for u in uses if u.state == "committed" and u.commit == head
                 and (u.result or {}).get("base") == base and u.verdict in ("pass", "fail")]
        if not prior:
            return False
        yield self._report_existing(led, prior[-1], f"{str(head)[:12]} was already scored against "
                                                    f"{str(base)[:12]} on this test set")
        return True


def _failure(result: dict[str, Any]) -> tuple[str, str, str]:
    """(easeml_status, cause text, kind) of a result.json without a verdict."""
    status, kind = eo.from_worker(result)
    return status, _failure_cause(result), kind


def _failure_cause(result: dict[str, Any]) -> str:
    return f"{result.get('cause') or result.get('status')}: {result.get('message') or ''}".strip()


class RecordResult(_MasterStep):
    """Commit the reserved use with the result; release it only if nothing saw the features.

    result.json's ``spent`` (written by the worker) is true once a model was started with the
    test set's features, whatever happened next: such a use is committed (counted) even
    without a verdict. A missing result.json after the evaluate step started is counted too:
    nobody can tell whether the features were seen.
    """

    name = "record result"

    @defer.inlineCallbacks
    def run(self):
        led = yield self.ledger()
        use_id = self.getProperty("easeml_use_id")
        result = yield self.collect_result()
        try:
            outcome = yield self._record(led, use_id, result)
        except Exception:
            # the ledger does not have it (database down): the use stays spent and its result
            # goes to the master-private directory for the operator
            where = self.keep_private("result.json", result)
            log.err(None, f"easeml: use {use_id} could not be recorded"
                          + (f"; its result stays in {where}" if where else ""))
            raise
        return outcome

    @defer.inlineCallbacks
    def collect_result(self):
        """result.json, read from the worker into memory (bounded, no copy on the master's
        disk); None when there is none (evaluate was killed or skipped), it is too large or
        unreadable: a use whose evaluation started is then counted without a verdict.

        A worker lost while it is read raises (Buildbot's ``ConnectionLost``: the step and the
        build are RETRY), as a worker lost in any step before: the use stays open and the
        retry settles it (``_open_use_slot``)."""
        from easeml_buildbot.master.factory import OUT, RESULT_MAX_BYTES

        try:
            return (yield self.read_worker_json(f"{OUT}/result.json", RESULT_MAX_BYTES))
        except error.ConnectionLost:
            raise
        except Exception as exc:  # the read itself failed: no result to record
            log.msg(f"easeml: result.json of use {self.getProperty('easeml_use_id')} not read: {exc}")
            return None

    def _evaluate_started(self) -> bool:
        for s in getattr(self.build, "executedSteps", ()):
            if getattr(s, "name", None) == "evaluate":
                return getattr(s, "results", None) != SKIPPED
        return False

    @defer.inlineCallbacks
    def _record(self, led, use_id, result):
        self.setProperty("easeml_use_closed", True, "easeml")
        oid, key = yield _open_use_slot(self)
        outcome = yield self._settle(led, use_id, result)
        # only now: a master killed before this line leaves the retry a committed use to report
        yield self.master.db.state.setState(oid, key, None)
        return outcome

    def _left(self, state, use_state: str) -> None:
        """The ledger's answer to commit/release: the only source of the counts reported."""
        remaining = getattr(state, "remaining", None)
        if remaining is not None:
            self.setProperty("easeml_uses_left", remaining, "easeml")
        if getattr(state, "retired", False):
            self.setProperty("easeml_retired", True, "easeml")
        self.ledger_answer(state, use_state=use_state)
        number = _facts(self.build).get("use_number")
        use = f"use {number}" if number else "the use"
        self.summary = (f"{use} given back: nothing saw the test set" if use_state == "released"
                        else f"{use} counted in the ledger")

    @defer.inlineCallbacks
    def _settle(self, led, use_id, result):
        from easeml_buildbot.custody.policy import developer_may_see

        if result is None:
            if not self._evaluate_started():
                state = yield threads.deferToThread(led.release, use_id, reason="the evaluation never started")
                self._left(state, "released")
                self.setProperty("easeml_released", True, "easeml")
                self.status("infra_error", "the evaluation did not start; the test-set use was released")
                yield self.note("evaluation never started: use released")
                return self._not_scored()
            # the model may have seen the features (nothing proves otherwise): counted
            state = yield threads.deferToThread(
                led.commit, use_id, verdict=None,
                result={"status": "infra_error", "cause": "no_result", "spent": True,
                        "message": "the evaluation step produced no result.json"})
            self._left(state, "committed")
            self.status("infra_error", "the evaluation step produced no result; the test-set use counts "
                        "(the model may have seen the test set)")
            yield self.note("no result.json: use counted")
            return self._not_scored()
        if result.get("samples_used") is not None:
            self.setProperty("easeml_samples_used", int(result["samples_used"]), "easeml")
        status = result.get("status")
        if status == "labels_needed" and result.get("spent"):
            # labels on demand: the models ran (spent), rows where they disagree have no label
            # yet. The use waits in the ledger (owner-only ids in its result) for the build that
            # re-evaluates this (head, base) once the labels are committed. What the developer
            # sees is what a verdict they may not see looks like (adaptivity none: nothing more).
            state = yield threads.deferToThread(led.await_labels, use_id, result)
            self._left(state, "awaiting_labels")
            self.status("evaluated")
            if (self.getProperty("easeml_adaptivity") or "none") != "none":
                self.setProperty("easeml_awaiting_labels", True, "easeml")
            yield self.note("result recorded in the ledger; the verdict goes to the owners only"
                            if (self.getProperty("easeml_adaptivity") or "none") == "none" else
                            "result recorded in the ledger; the verdict follows once the owners "
                            "have labelled the rows they were sent")
            return SUCCESS
        if not result.get("scored") or status != "scored" or not result.get("verdict"):
            cause = _failure_cause(result)
            easeml_status, _, kind = _failure(result)
            if result.get("spent") is False:  # the worker says no model saw the features
                reason = (result.get("message") or status or "not scored")
                state = yield threads.deferToThread(led.release, use_id, reason=reason[:500])
                self._left(state, "released")
                self.setProperty("easeml_released", True, "easeml")
                self.status(easeml_status, cause, kind)
                yield self.note(f"not scored ({result.get('cause') or status}); nothing saw the test set: use released")
                return self._not_scored()
            # owners are recorded as notified when their mail is delivered (master.outbox)
            state = yield threads.deferToThread(led.commit, use_id, verdict=None, result=result)
            self._left(state, "committed")
            self.status(easeml_status, cause, kind)
            yield self.note(f"not scored ({result.get('cause') or status}) after the model saw the test set: "
                            "use counted")
            return self._not_scored()
        verdict = result["verdict"]
        outcome = verdict.get("outcome")
        adaptivity = self.getProperty("easeml_adaptivity") or "none"
        # ``notified`` is filled by the mail outbox on delivery, not here: a mail that never
        # arrives must not list its owners as notified
        state = yield threads.deferToThread(led.commit, use_id, verdict=outcome, result=result)
        self._left(state, "committed")
        self.status("evaluated")
        _facts(self.build).update(verdict=outcome, verdict_doc=verdict)
        visible = developer_may_see(adaptivity, outcome)
        if visible:
            self.setProperty("easeml_verdict", outcome, "easeml")
        yield self.note("result recorded in the ledger" + (f"; verdict {outcome}" if visible else
                        "; the verdict goes to the owners only"))
        self.build.easeml_outcome = outcome  # in memory only: RecordAccepted reads it
        # recording succeeded: this step is green; a visible fail is the "outcome" step's red
        return SUCCESS

    def _not_scored(self):
        """Recorded, no verdict. The step that failed (evaluate, exit code != 0) is the red one;
        this one is red only when nothing before it failed (the build must not look green)."""
        earlier = [s.results for s in getattr(self.build, "executedSteps", ()) if s is not self]
        return SUCCESS if any(r in (FAILURE, EXCEPTION) for r in earlier) else FAILURE


class RecordAccepted(_MasterStep):
    """Local forge: a commit that passed becomes the accepted model ``o`` for later commits."""

    name = "record accepted model"

    @defer.inlineCallbacks
    def run(self):
        if getattr(self.build, "easeml_outcome", None) != "pass":
            yield self.note("not accepted: the verdict was not pass")
            return SKIPPED
        sha = head_revision(self)
        yield set_accepted(self.master, self.getProperty("easeml_repo"), sha, self.getProperty("branch") or "")
        yield self.note(f"{sha} is now the accepted model")
        return SUCCESS


class Finalize(_MasterStep):
    """The build's last master step: write its one typed outcome (``master/outcome.py``).

    Every finished build carries ``easeml_status`` and ``easeml_outcome`` for the reporters;
    the counts in it are the ledger's answers remembered by the steps above, never
    re-derived. Its line is the build's summary in the Buildbot UI
    (``fail · n > 0.85 ± 0.05 · use 2 of 8 · 6 left``). It is red for a visible failed
    condition (the only red step then), and for a build that ended without a verdict when no
    step before it is red.
    """

    name = "outcome"

    def __init__(self, settings: Any, **kwargs: Any) -> None:
        kwargs.setdefault("updateBuildSummaryPolicy", True)
        super().__init__(settings, **kwargs)

    def getBuildResultSummary(self):
        summary = self.getResultSummary()
        if self.summary:
            summary["build"] = summary["step"]
        return defer.succeed(summary)

    @defer.inlineCallbacks
    def run(self):
        if not self.getProperty("easeml_status"):
            failed = [s.name for s in self.build.executedSteps
                      if s is not self and s.results not in (None, SUCCESS, SKIPPED, WARNINGS)]
            self.status("infra_error", f"step '{failed[0]}' failed" if failed else "the build ended without a verdict")
        outcome = self.outcome()
        self.setProperty(eo.PROPERTY, outcome.to_property(), "easeml")
        self.summary = outcome.summary_line()
        # the log's database writes and the worker's round trips overlap (the build's last
        # ~20 ms); both are done before the step ends
        noted = self.note(f"status {outcome.status}" + (f" ({outcome.kind})" if outcome.kind else "")
                          + f": {self.summary}")
        try:
            yield self.clean_worker()
            yield self.head_author()
        except Exception:
            noted.addErrback(log.err)  # logged, never hiding the error that ended the step
            raise
        yield noted
        earlier = [s.results for s in self.build.executedSteps if s is not self]
        if outcome.status == "evaluated":
            return FAILURE if outcome.shown_verdict == "fail" else SUCCESS
        if outcome.status in ("exhausted", "protected_changed", "not_evaluated"):
            return SUCCESS
        return SUCCESS if any(r in (FAILURE, EXCEPTION) for r in earlier) else FAILURE

    @defer.inlineCallbacks
    def clean_worker(self):
        """Remove the build's ``../easeml-out`` (inspect.json, result.json) from the worker:
        Buildbot's ``rmdir`` worker command, inside this step rather than a step of its own.
        Best effort: a lost worker leaves the files, and the next build's checkout empties
        the directory before anything reads it."""
        from easeml_buildbot.master.factory import OUT

        if getattr(self.build, "conn", None) is None:  # the worker is gone already
            return
        out = posixpath.normpath(posixpath.join(self.workdir or "build", OUT))
        cmd = remotecommand.RemoteCommand("rmdir", {"dir": out, "logEnviron": False},
                                          decodeRC={None: SUCCESS, 0: SUCCESS})
        try:
            yield self.runCommand(cmd)
        except Exception as exc:
            log.msg(f"easeml: {out} not removed from the worker: {exc}")

    @defer.inlineCallbacks
    def head_author(self):
        """``easeml_author_email`` when no inspection reported it (a build that stopped
        before ``read config``): ``git log -1 --format=%ae HEAD`` on the worker, inside this
        step (it was a hidden step of its own, a step's bookkeeping in every build). GitHub's
        pull-request events name a login, not an address; mail to it still goes only to
        allowed domains, with only what the developer may see. Best effort, no log."""
        if self.getProperty("easeml_author_email") or getattr(self.build, "conn", None) is None:
            return
        cmd = remotecommand.RemoteShellCommand(self.workdir or "build", ["git", "log", "-1", "--format=%ae", "HEAD"],
                                               want_stderr=False, collectStdout=True, logEnviron=False,
                                               timeout=60, decodeRC={0: SUCCESS})
        try:
            yield self.runCommand(cmd)
        except Exception as exc:
            log.msg(f"easeml: the head commit's author not read: {exc}")
            return
        email = (cmd.stdout or "").strip()
        if cmd.rc == 0 and email and len(email) <= 320 and not any(c.isspace() for c in email):
            self.setProperty("easeml_author_email", email, "easeml")

    def outcome(self) -> eo.EvaluationOutcome:
        from easeml_buildbot.custody.policy import developer_may_see

        facts = _facts(self.build)
        status = self.getProperty("easeml_status")
        if status not in eo.STATUSES:  # a step's typo must not cost the build its outcome
            log.msg(f"easeml: unknown easeml_status {status!r}; reported as infra_error")
            status, facts["kind"] = "infra_error", "infrastructure"
        adaptivity = self.getProperty("easeml_adaptivity")
        verdict = facts.get("verdict") if status == "evaluated" else None
        doc = facts.get("verdict_doc") or {}
        clauses = []
        for c in doc.get("clauses") or ():
            if isinstance(c, dict):
                lo, hi = (list(c.get("interval") or []) + [None, None])[:2]
                clauses.append(eo.Clause(text=str(c.get("clause")), outcome=c.get("outcome"),
                                         estimate=c.get("estimate"), lower=lo, upper=hi))
        samples = self.getProperty("easeml_samples_used")
        use_state = facts.get("use_state")
        return eo.EvaluationOutcome(
            status=status, kind=facts["kind"] if "kind" in facts else eo.kind_for(status),
            cause=str(self.getProperty("easeml_cause") or "")[:4000],
            verdict=verdict,
            verdict_visible=bool(verdict) and developer_may_see(adaptivity or "none", verdict),
            condition=str(self.getProperty("easeml_condition") or "") or None,
            reliability=self.getProperty("easeml_reliability"), adaptivity=adaptivity,
            samples_used=int(samples) if samples is not None and use_state == "committed" else None,
            samples_needed=self.getProperty("easeml_samples_needed"),
            use_number=facts.get("use_number"), budget=facts.get("budget"),
            uses_left=facts.get("uses_left"), use_state=use_state if use_state != "reserved" else None,
            retired=bool(facts.get("retired")), reused=bool(facts.get("reused")), clauses=tuple(clauses))


def ensure_private_dir(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
