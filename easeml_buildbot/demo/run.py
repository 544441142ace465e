"""Orchestration of ``easeml demo``: set up, start, commit, report, stop."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from easeml_buildbot.demo import repo as demo_repo
from easeml_buildbot.demo.mail import MailFolderServer, free_port
from easeml_buildbot.demo.services import Master, Processes, ServiceError, Worker

MARKER = ".easeml-demo"
PROJECT = "demo/digits"
BASE_IMAGE = "easeml/python:bookworm"
WORKER_NAME = "demo-worker"


class DemoError(Exception):
    """The demo could not run; the message says why and what to do."""


@dataclass(frozen=True)
class DemoOptions:
    directory: Path = Path("demo-out")
    runner: str = "auto"            # auto | docker | process
    port: int | None = None         # the Buildbot UI's port (default 8010 when free)
    wait: bool | None = None        # keep the UI up until Ctrl-C (default: when stdin is a TTY)
    build_timeout: float = 300.0    # seconds per commit
    summary_json: Path | None = None


@dataclass
class CommitReport:
    sha: str
    message: str
    expected: str
    status: str                     # easeml_status of the build
    verdict: str | None             # pass | fail | None (not scored)
    samples_used: int | None
    uses_left: int | None
    use_id: int | None
    cause: str | None
    build_url: str
    seconds: float
    dev_accuracy: float | None
    released: bool = False          # the use was given back (no model saw the features)
    kind: str | None = None         # why there is no verdict (master/outcome.py KINDS)
    summary: str = ""               # the build's summary line in the Buildbot UI


@dataclass
class DemoResult:
    runner: str
    runner_reason: str
    ui_url: str
    mail_dir: str
    ledger_url: str
    repo: str
    dataset_id: str
    budget: int
    samples_needed: int
    commits: list[CommitReport] = field(default_factory=list)
    mails: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ledger_remaining: int | None = None   # read once the master has stopped
    ledger_agrees: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """Timestamped lines on stdout (flushed: the demo is watched live)."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.t0 = time.monotonic()
        self.out = out

    def __call__(self, text: str = "", *, stamp: bool = True) -> None:
        prefix = f"[{time.monotonic() - self.t0:6.1f}s] " if stamp else " " * 10
        self.out.write(prefix + text + "\n" if text else "\n")
        self.out.flush()


def choose_runner(asked: str) -> tuple[str, str]:
    """(runner, why): Docker when a daemon answers and the base image exists."""
    if asked == "process":
        return "process", "asked for with --runner process"
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable daemon
        if asked == "docker":
            raise DemoError(f"--runner docker: no Docker daemon answers ({exc})") from None
        return "process", "no Docker daemon answers"
    try:
        client.images.get(BASE_IMAGE)
    except Exception:  # noqa: BLE001
        why = f"Docker answers but the base image {BASE_IMAGE} is missing (bash scripts/build-base-image.sh)"
        if asked == "docker":
            raise DemoError(why) from None
        return "process", why
    return "docker", f"a Docker daemon answers and {BASE_IMAGE} is here"


def prepare_directory(path: Path) -> Path:
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise DemoError(f"{path}: exists, is not empty and was not made by the demo; "
                            "choose another --dir")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by `easeml demo`; removed by the next run\n")
    return path


def _port(preferred: int | None) -> int:
    """``--port`` as given, else 8010 when free, else any free port (``--port 0``: any)."""
    import socket

    if preferred == 0:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred or 8010))
            return preferred or 8010
        except OSError:
            if preferred:
                raise DemoError(f"--port {preferred}: in use") from None
    return free_port()


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> DemoResult:
    """Run the whole demo; everything started here is stopped before returning."""
    say = Progress(out)
    procs = Processes()
    mail: MailFolderServer | None = None
    result: DemoResult | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        say("easeml demo: the whole service on this machine (no GitHub, no outside SMTP)")
        root = prepare_directory(options.directory)
        runner, why = choose_runner(options.runner)
        say(f"runner: {runner} ({why})" + ("" if runner == "docker" else
            "; the process runner is not a sandbox, fine for this demo's own models"))

        from easeml_buildbot.custody.keys import create_keypair
        from easeml_buildbot.custody.dataset import dataset_id
        from easeml_buildbot.config import load_config

        pub, priv = create_keypair(root / "keys", "easeml demo service", "easeml-demo@localhost", None)
        say(f"service keys: throwaway GnuPG key pair in {root / 'keys'}")
        repo = demo_repo.DemoRepo(root / "repo", pub)
        initial = repo.create()
        cfg = load_config(repo.path / ".easeml.yml")
        needed = cfg.required_samples().labels
        ds_id = dataset_id(repo.path / "data" / "test.csv.gpg")
        say(f"model repository: {repo.path} (scikit-learn on the digits images, weights in numpy)")
        say(f"test set: {len(repo.y_test)} labelled images, encrypted to the service key "
            f"-> data/test.csv.gpg (id {ds_id[:12]})", stamp=False)
        say(f"condition: {cfg.condition_text}, reliability {cfg.reliability}, adaptivity "
            f"{cfg.adaptivity}, {cfg.steps} uses: needs {needed} labelled samples", stamp=False)

        mail = MailFolderServer(root / "mail").start()
        say(f"mail: local SMTP server on 127.0.0.1:{mail.port}, every message filed in {mail.folder}")

        www_port = _port(options.port)
        url = f"http://127.0.0.1:{www_port}/"
        ledger_url = f"sqlite:///{root / 'ledger.sqlite'}"
        password = secrets.token_hex(16)
        master = Master(root / "master", {
            "forge": "local", "title": "easeml demo", "buildbot_url": url, "www_port": www_port,
            "worker_port": free_port(), "bind_address": "127.0.0.1",
            "db_url": "sqlite:///state.sqlite", "ledger_url": ledger_url, "results_dir": "results",
            "runner": runner, "build_timeout": int(options.build_timeout),
            "operator_email": "operator@example.com", "allowed_email_domains": ["example.com"],
            "email_enabled": True,
            "local": {"repo": str(repo.path), "branch": demo_repo.BRANCH, "poll_interval": 2,
                      "project": PROJECT},
            "smtp": {"host": "127.0.0.1", "port": mail.port, "tls": False,
                     "from_addr": "easeml-ci@example.com"},
            "workers": [{"name": WORKER_NAME, "password": password}],
        }, procs)
        say("master: creating and starting Buildbot (SQLite, forge = local) ...")
        master.start()
        say(f"master: up at {url}, polling {repo.path} (branch {demo_repo.BRANCH}) every 2s")
        worker = Worker(root / "worker", {
            "master": f"127.0.0.1:{master.settings['worker_port']}", "name": WORKER_NAME,
            "password": password, "maxdelay": 2,
            "env": {"EASEML_WORKER_KEY": str(priv), "EASEML_WORKER_RUNNER": runner,
                    "EASEML_WORKER_CACHE_DIR": str(root / "worker" / "cache")},
        }, master, procs)
        worker.start()
        say(f"worker: {WORKER_NAME} connected (holds the private key; runs models with the {runner} runner)")
        _wait_first_poll(master)
        say(f"initial commit {initial.sha[:10]} is the accepted model o ({initial.message.lower()})")

        result = DemoResult(runner=runner, runner_reason=why, ui_url=url, mail_dir=str(mail.folder),
                            ledger_url=ledger_url, repo=PROJECT, dataset_id=ds_id,
                            budget=cfg.steps, samples_needed=needed)
        for i, spec in enumerate(demo_repo.COMMITS, 1):
            say()
            commit = repo.commit_model(spec)
            say(f"commit {i}/{len(demo_repo.COMMITS)} {commit.sha[:10]}: {commit.message}")
            report = _follow_build(master, commit, options.build_timeout, say)
            result.commits.append(report)
            say(_verdict_line(report, cfg.steps), stamp=False)

        say()
        _wait_mails(mail, result, timeout=30)
        result.mails = [p.name for p in mail.messages()]
        result.seconds = round(time.monotonic() - say.t0, 1)
        _summary(result, say)
        wait = sys.stdin.isatty() if options.wait is None else options.wait
        if wait:
            say(f"The Buildbot UI stays up at {url} ; press Ctrl-C to stop everything.")
            try:
                while master.alive():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return result
    except ServiceError as exc:
        raise DemoError(str(exc)) from None
    finally:
        # A second Ctrl-C (or the SIGINT a wrapper forwards) must not cut the clean-up short.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            say("stopping the worker, the master and the mail server ...")
            procs.stop()
            if mail is not None:
                mail.stop()
            say("stopped everything the demo started")
            if result is not None and result.commits:
                _ledger_check(result, say)
                if options.summary_json:
                    Path(options.summary_json).write_text(json.dumps(result.to_dict(), indent=2))
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


def _ledger_check(result: DemoResult, say: Progress) -> None:
    """With the master stopped, read the ledger and compare it with what was announced."""
    from easeml_buildbot.custody.ledger import Ledger

    with Ledger(result.ledger_url) as led:
        state = led.state(result.repo, result.dataset_id)
        uses = {u.commit: u for u in led.uses(result.repo, result.dataset_id)}
    if state is None:
        say("ledger: no use of the test set was recorded")
        return
    result.ledger_remaining = state.remaining
    agree = all(
        (uses.get(c.sha) is not None) and (
            (uses[c.sha].state == "committed" and uses[c.sha].verdict == c.verdict)
            # not scored: given back exactly when no model saw the features (the master
            # then set easeml_released); a model that ran and failed spent its use
            if c.status == "evaluated" else (uses[c.sha].state == "released") == c.released)
        for c in result.commits if c.use_id is not None)
    last = result.commits[-1].uses_left if result.commits else None
    agree = agree and last == state.remaining
    result.ledger_agrees = agree
    say(f"ledger: {state.uses} of {state.budget} uses spent, {state.remaining} left; "
        + ("it agrees with every verdict announced above" if agree else "IT DISAGREES with what was announced"))


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def _wait_first_poll(master: Master, timeout: float = 60) -> None:
    """Commits made before the GitPoller's first poll would be taken as the starting point."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = master.log()
        if "gitpoller: processing changes" in log:
            return
        if "while polling for changes" in log:  # the poller failed: say why instead of waiting
            raise DemoError("the master's GitPoller cannot read the demo repository:\n" + log[-3000:])
        time.sleep(0.3)
    raise DemoError(f"the master's GitPoller did not poll within {timeout:.0f}s:\n" + master.log()[-3000:])


def _props(master: Master, buildid: int) -> dict[str, Any]:
    props = master.api(f"builds/{buildid}/properties")
    return {k: v[0] for k, v in (props[0] if props else {}).items()}


def _follow_build(master: Master, commit: demo_repo.Commit, timeout: float, say: Progress) -> CommitReport:
    """Wait for the build of ``commit``, printing each step as it finishes."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    build = None
    shown: set[int] = set()
    while time.monotonic() < deadline:
        if not master.alive():
            raise DemoError("the master stopped\n" + master.log()[-3000:])
        if build is None:
            for b in master.api("builds?order=-buildid&limit=10"):
                if _props(master, b["buildid"]).get("revision") == commit.sha:
                    build = b
                    say(f"  build {b['number']} started (picked up by the GitPoller)", stamp=False)
                    break
        if build is not None:
            for st in master.api(f"builds/{build['buildid']}/steps"):
                if st.get("complete") and st["stepid"] not in shown and not st.get("hidden"):
                    shown.add(st["stepid"])
                    took = (st.get("complete_at") or 0) - (st.get("started_at") or st.get("complete_at") or 0)
                    mark = {0: "ok", 1: "warn", 2: "FAIL", 3: "skip", 4: "ERROR", 5: "retry", 6: "cancel"}
                    result = mark.get(st.get("results"), "?")
                    if result != "skip":
                        say(f"    {result:>5}  {st['name']} ({took:.1f}s)", stamp=False)
            current = master.api(f"builds/{build['buildid']}")
            if current and current[0].get("complete"):
                p = _props(master, build["buildid"])
                # the build's one typed outcome, written by its last step from the ledger's
                # answers: nothing here is re-derived or corrected
                from easeml_buildbot.master.outcome import EvaluationOutcome, from_build_properties

                ev = from_build_properties(p) or EvaluationOutcome(status="infra_error", kind="infrastructure",
                                                                   cause="the build wrote no outcome")
                return CommitReport(
                    sha=commit.sha, message=commit.message, expected=commit.spec.expect,
                    status=ev.status, verdict=ev.shown_verdict,
                    samples_used=ev.samples_used or 0,
                    uses_left=ev.uses_left, use_id=p.get("easeml_use_id"),
                    released=ev.released, kind=ev.kind, summary=ev.summary_line(),
                    cause=ev.cause or None,
                    build_url=f"{master.url}#/builders/{build['builderid']}/builds/{build['number']}",
                    seconds=round(time.monotonic() - t0, 1), dev_accuracy=commit.dev_accuracy)
        time.sleep(1.0)
    raise DemoError(f"no finished build for {commit.sha[:10]} after {timeout:.0f}s\n{master.log()[-3000:]}")


def _verdict_line(r: CommitReport, budget: int) -> str:
    if r.status == "evaluated":
        what = (r.verdict or "sent to the owners").upper()
    else:
        what = r.status.upper().replace("_", " ")
    left = f"{r.uses_left}/{budget}" if r.uses_left is not None else "?"
    used = f"{r.samples_used}" if r.samples_used else (
        "0 (nothing scored: the use was given back)" if r.released else
        "0 (nothing scored, but the model saw the features: the use is spent)")
    line = f"  => verdict: {what}   samples used: {used}   uses left: {left}   ({r.seconds:.0f}s)"
    if r.summary:
        line += f"\n     build summary: {r.summary}"
    if r.cause and r.status != "evaluated":
        line += f"\n     cause: {r.cause.splitlines()[0][:200]}"
    return line


def _wait_mails(mail: MailFolderServer, result: DemoResult, timeout: float) -> None:
    """Mail goes out just after each build: wait until every commit has its mail (named
    after the commit), then a moment for the rest of that build's mails."""
    deadline = time.monotonic() + timeout
    want = {c.sha[:7] for c in result.commits}
    while time.monotonic() < deadline:
        names = " ".join(p.name for p in mail.messages())
        if all(sha in names for sha in want):
            time.sleep(2)
            return
        time.sleep(0.5)


def _summary(result: DemoResult, say: Progress) -> None:
    say(f"done in {result.seconds:.0f}s with the {result.runner} runner.")
    say("commit      expected     decided                    samples  uses left", stamp=False)
    for c in result.commits:
        decided = c.verdict if c.status == "evaluated" else c.status
        say(f"{c.sha[:10]}  {c.expected:<11}  {str(decided):<25}  {c.samples_used or 0:>7}  "
            f"{c.uses_left if c.uses_left is not None else '?':>4}/{result.budget}", stamp=False)
    say(f"Buildbot UI:  {result.ui_url}#/builders", stamp=False)
    say(f"mails ({len(result.mails)}):    {result.mail_dir}", stamp=False)
    for name in result.mails:
        say(f"  {name}", stamp=False)
    say(f"ledger:       easeml ledger show --url {result.ledger_url}", stamp=False)
