"""The head commit, the base and the refs a build reads, checked out in one worker command.

Why not Buildbot's Git step: in ``mode="full", method="fresh"`` it runs six to eight git
commands (version, clean, fetch, reset, rev-parse, ...), each a round trip to the worker,
and the base branch, the default branch and the base commit were three more steps: ~0.9 s of
a trivial build's ~3 s. Here one shell command, with arguments passed as argv (branch names
are the developer's: never shell text), does what those did:

* ``git init`` once, then every ``refs/remotes/`` ref is dropped: the refs the inspection
  and the evaluation read (``refs/remotes/origin/<base>``, ``.../<default branch>``) are
  always this build's fetch, never an earlier build's;
* one ``git fetch`` of the head commit, the base commit and the branch refs (by SHA; a
  server that refuses SHA wants gets the branch instead);
* a forced, detached checkout of the head and ``git clean -ffdx`` (Buildbot's "fresh");
* the head and the base commit resolved (``got_revision``, ``easeml_base_sha``);
* in the evaluation build, ``easeml worker inspect`` on them (it was a step of its own: a
  worker round trip and a step's database writes more per build).

A private repository is cloned with the GitHub App's installation token: it reaches git
through a credential helper that reads it from the command's environment (never a URL, a
file or ``.git/config``), registered with ``useSecret`` so Buildbot redacts it from every
log; git sends it only when the server asks for authentication.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer, threads

from buildbot.process import buildstep
from buildbot.process.results import FAILURE, SUCCESS

#: ``sh -ec SCRIPT checkout URL HEAD BRANCH BASE BASE_SHA OUT CONFIG_REV BASE_REF DEFAULT REFSPEC...``;
#: prints ``head <sha>`` and, when a base was asked for, ``base <sha>``; with an OUT it then
#: empties OUT and runs ``easeml worker inspect`` on the commits it resolved ("" = not given)
SCRIPT = r"""
url=$1 head=$2 branch=$3 base=$4 base_sha=$5 out=$6 config_rev=$7 base_ref=$8 default=$9
shift 9
[ -d .git ] || git init -q
git for-each-ref --format='delete %(refname)' refs/remotes/ | git update-ref --stdin
if [ -n "$head" ]; then
  git fetch -q --no-tags -f -- "$url" "$head" $base_sha "$@" 2>/dev/null ||
    git fetch -q --no-tags -f -- "$url" "$branch" "$@"
  rev=$head
else
  git fetch -q --no-tags -f -- "$url" "$branch" "$@"
  rev=FETCH_HEAD
fi
git -c advice.detachedHead=false checkout -q -f --detach "$rev^{commit}" --
git clean -q -ffdx
echo "head $(git rev-parse HEAD)"
if [ -n "$base" ]; then
  sha=$(git rev-parse -q --verify "$base^{commit}") || { echo "the base $base is not a commit of this repository" >&2; exit 1; }
  echo "base $sha"
fi
[ -n "$out" ] || exit 0
# a build lost with its worker never removed its files (outcome does): they must not become this build's
rm -rf "$out" && mkdir -p "$out"
set -- --repo . --head "$(git rev-parse HEAD)" --out "$out/inspect.json" --no-plan
[ -z "$base" ] || set -- "$@" --base "$sha"
[ -z "$config_rev" ] || set -- "$@" --config-rev "$config_rev"
[ -z "$default" ] || set -- "$@" --base-ref "$base_ref" --default-branch "$default"
exec easeml worker inspect "$@"
"""

SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")

#: ``GIT_CONFIG_*``: no credential helper of the worker's, then ours, which answers ``get``
#: with the token from the environment (git runs it only on an authentication challenge)
HELPER = ('!f() { test "$1" = get && echo username=x-access-token && '
          'echo "password=$EASEML_GIT_TOKEN"; }; f')


def refspecs(base_ref: str | None, default_branch: str | None) -> list[str]:
    """The branch refs a build reads, as ``refs/remotes/origin/<name>``."""
    names = [n for n in (base_ref, default_branch) if n]
    return [f"+refs/heads/{n}:refs/remotes/origin/{n}" for n in dict.fromkeys(names)]


def command(url: str, head: str, branch: str, base_rev: str = "", base_sha: str = "",
            base_ref: str | None = None, default_branch: str | None = None, *,
            inspect_out: str = "", config_rev: str | None = None) -> list[str]:
    """The worker command: ``head`` (a SHA, or "" for the branch's tip), the base to resolve
    (``base_sha`` when known, else the revision ``base_rev``) and the branches to fetch.

    ``inspect_out``: then ``easeml worker inspect --no-plan`` (the configuration on
    ``config_rev``, else the base; the branch check with the default branch) writes
    ``inspect_out/inspect.json`` in the same command, the directory emptied first."""
    return ["sh", "-ec", SCRIPT, "checkout", url, head, branch, base_sha or base_rev, base_sha,
            inspect_out, config_rev or "", base_ref or "", default_branch or "",
            *refspecs(base_ref, default_branch)]


def token_env(token: str) -> dict[str, str]:
    return {"EASEML_GIT_TOKEN": token, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_COUNT": "2",
            "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": "",
            "GIT_CONFIG_KEY_1": "credential.helper", "GIT_CONFIG_VALUE_1": HELPER}


def parse_output(stdout: str) -> dict[str, str]:
    """``{"head": sha, "base": sha}`` from the script's stdout (git's own lines ignored)."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        if key in ("head", "base") and SHA.match(value):
            out[key] = value
    return out


class Checkout(buildstep.ShellMixin, buildstep.BuildStep):
    """Check out the build's head commit and fetch the refs it reads (module docstring)."""

    name = "checkout"
    description = "checking out the head commit"
    descriptionDone = "checked out"

    def __init__(self, settings: Any = None, *, inspect_out: str = "", config_rev: Any = None,
                 resolve_base: Any = None, **kwargs: Any) -> None:
        self.easeml_settings = settings
        # with inspect_out: ``easeml worker inspect`` in the same command (one worker round
        # trip and one step fewer per build); config_rev may be a renderable
        self.inspect_out = inspect_out
        self.config_rev = config_rev
        # the evaluation build: choose the base first (steps.resolve_base; it was a step of its own)
        self.resolve_base = resolve_base
        if inspect_out:
            self.description = "checking out the head commit, reading .easeml.yml"
        kwargs.setdefault("logEnviron", False)
        kwargs = self.setupShellMixin(kwargs, prohibitArgs=["command"])
        super().__init__(**kwargs)

    @defer.inlineCallbacks
    def _installation_token(self):
        """The App's installation token for an HTTP(S) clone on the GitHub forge, else None."""
        settings = self.easeml_settings
        inst = self.getProperty("easeml_installation_id")
        url = str(self.getProperty("repository") or "")
        if settings is None or settings.forge != "github" or not inst or \
                not url.startswith(("https://", "http://")):
            return None
        from easeml_buildbot.master.service import easeml_service

        # in the GitHub thread pool (master.checkruns): a slow GitHub must not hold one of the
        # reactor's default threads, which the ledger steps and the web UI need
        github = self.master.service_manager.namedServices.get("easeml-github")
        fetch = easeml_service(self.master).app().clone_token
        token = yield (github.run(fetch, int(inst)) if github is not None
                       else threads.deferToThread(fetch, int(inst)))
        self.build.properties.useSecret(token, "github installation token")
        return token

    @defer.inlineCallbacks
    def run(self):
        based = (yield self.resolve_base(self)) if self.resolve_base is not None else ""
        head = str(self.getProperty("revision") or "")
        base_sha = str(self.getProperty("easeml_base_sha") or "")
        for what, value in (("head", head), ("base", base_sha)):
            if value and not SHA.match(value):
                yield self.addCompleteLog("error", f"the {what} commit {value!r} is not a commit SHA\n")
                self.descriptionDone = f"not a commit SHA: {what}"
                return FAILURE
        base_rev = str(self.getProperty("easeml_base_rev") or "")
        token = yield self._installation_token()
        config_rev = yield self.build.render(self.config_rev)
        argv = command(str(self.getProperty("repository") or ""), head, str(self.getProperty("branch") or ""),
                       base_rev, base_sha, self.getProperty("easeml_base_ref"),
                       self.getProperty("easeml_default_branch"), inspect_out=self.inspect_out,
                       config_rev=str(config_rev) if config_rev else None)
        cmd = yield self.makeRemoteShellCommand(command=argv, collectStdout=True,
                                                env=token_env(token) if token else {})
        yield self.runCommand(cmd)
        got = parse_output(cmd.stdout or "")
        checked_out = "head" in got and (not (base_sha or base_rev) or "base" in got)
        if checked_out:
            self.setProperty("got_revision", got["head"], "Git")
            if "base" in got:
                self.setProperty("easeml_base_sha", got["base"], "easeml")
        if cmd.didFail() or not checked_out:
            self.descriptionDone = ("reading .easeml.yml failed" if checked_out and self.inspect_out
                                    else "checkout failed")
            return FAILURE
        self.descriptionDone = f"checked out {got['head'][:10]}" + (f" ({based})" if based else "") + (
            "; read .easeml.yml and the test set id" if self.inspect_out else "")
        return SUCCESS
