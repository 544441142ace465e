"""The accepted model ``o``: the last commit of a repository's default branch we compare against.

Why in Buildbot's state table: it survives master restarts and needs no extra database.
A push to the default branch (GitHub) or, with the local forge, a passing commit or a
configuration commit (one that changes ``.easeml.yml`` or the test set) on the polled
branch records it; a build reads it to choose the base the new model is compared to and
where its configuration and test set come from.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

_OBJECT = ("easeml-accepted-models", "easeml_buildbot.master.accepted")


@defer.inlineCallbacks
def get_accepted(master: Any, repo: str):
    oid = yield master.db.state.getObjectId(*_OBJECT)
    value = yield master.db.state.getState(oid, repo, None)
    return value  # {"sha": ..., "branch": ..., ["configuration": True]} or None


@defer.inlineCallbacks
def set_accepted(master: Any, repo: str, sha: str, branch: str, *, configuration: bool = False):
    """``configuration``: ``sha`` was accepted as a new configuration (local forge), not
    because its model passed; shown in the next build's log."""
    oid = yield master.db.state.getObjectId(*_OBJECT)
    value = {"sha": sha, "branch": branch}
    if configuration:
        value["configuration"] = True
    yield master.db.state.setState(oid, repo, value)
