"""The accepted model ``o``: the last commit of a repository's default branch we compare against.

Why in Buildbot's state table: it survives master restarts and needs no extra database.
A push to the default branch (GitHub) or a passing commit on the polled branch (local
forge) records it; a build reads it to choose the base the new model is compared to.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

_OBJECT = ("easeml-accepted-models", "easeml_buildbot.master.accepted")


@defer.inlineCallbacks
def get_accepted(master: Any, repo: str):
    oid = yield master.db.state.getObjectId(*_OBJECT)
    value = yield master.db.state.getState(oid, repo, None)
    return value  # {"sha": ..., "branch": ...} or None


@defer.inlineCallbacks
def set_accepted(master: Any, repo: str, sha: str, branch: str):
    oid = yield master.db.state.getObjectId(*_OBJECT)
    yield master.db.state.setState(oid, repo, {"sha": sha, "branch": branch})
