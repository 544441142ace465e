"""Fixes for Buildbot 4.3 that the service depends on: :func:`apply` (by ``configure``) and
:func:`apply_to_master` (by ``EasemlService`` when it starts).

**Writes from the build thread.** Buildbot 4.3's REST API (``V2RootResource._write_json_data``) writes the response from a
thread-pool thread. Twisted transports are not thread-safe: when a client disconnects
while the thread writes (a browser tab closed, a probe timing out), the epoll reactor is
corrupted and the master stops accepting connections, workers and webhooks included
(``FileNotFoundError`` from ``epoll.modify`` in twistd.log). The fix keeps the JSON
encoding in the thread (the expensive part) and does every write on the reactor thread.
"""

from __future__ import annotations

from typing import Any

_applied = False


def apply() -> None:
    global _applied
    if _applied:
        return
    from twisted.internet import reactor, threads

    from buildbot.util import unicode2bytes
    from buildbot.www import rest

    finished = getattr(rest, "_is_request_finished", lambda req: bool(req.finished or req.channel is None))

    def _write_json_data(request: Any, encoder: Any, data: Any) -> None:
        body = b"".join(unicode2bytes(chunk) for chunk in encoder.iterencode(data))

        def write() -> None:
            if finished(request):
                return
            request.setHeader(b"content-length", unicode2bytes(str(len(body))))
            if request.method != b"HEAD":
                request.write(body)

        threads.blockingCallFromThread(reactor, write)

    rest.V2RootResource._write_json_data = staticmethod(_write_json_data)
    _applied = True


def apply_to_master(master: Any) -> None:
    """**Build properties in one transaction.** Buildbot 4.3 writes a build's properties
    after every step (``data.updates.setBuildProperties``) one per database transaction: a
    select and an insert or update for each changed property, each its own thread hop and
    commit (~46 of the ~146 transactions of a trivial evaluation build; more than any other
    table). Here the changed properties of one call are written in one transaction, with the
    same rows, the same comparison with what is stored and the same one ``properties/update``
    event afterwards. One difference: a property whose name or source is too long for its
    column rolls the whole call back (Buildbot kept the ones written before it; in both no
    event is sent). Bound on the master's own ``data.updates`` (its methods are bound when
    the data connector is built, before ``master.cfg`` is read)."""
    updates = getattr(getattr(master, "data", None), "updates", None)
    original = getattr(updates, "setBuildProperties", None)
    rtype = getattr(original, "__self__", None)
    if rtype is None or getattr(original, "easeml_batched", False):
        return
    import json

    import sqlalchemy as sa
    from twisted.internet import defer

    db = master.db

    def write(buildid: int, changed: dict[str, tuple[Any, str]]):
        def thd(conn: Any) -> None:
            tbl = db.model.build_properties
            stored = {r.name: (r.value, r.source) for r in conn.execute(
                sa.select(tbl.c.name, tbl.c.value, tbl.c.source).where(tbl.c.buildid == buildid))}
            for name, (value, source) in changed.items():
                db.builds.checkLength(tbl.c.name, name)
                db.builds.checkLength(tbl.c.source, source)
                value_js = json.dumps(value)
                if name not in stored:
                    conn.execute(tbl.insert(), {"buildid": buildid, "name": name, "value": value_js,
                                                "source": source})
                elif stored[name] != (value_js, source):
                    conn.execute(tbl.update().where(sa.and_(tbl.c.buildid == buildid, tbl.c.name == name)),
                                 {"value": value_js, "source": source})

        return db.pool.do_with_transaction(thd)

    @defer.inlineCallbacks
    def setBuildProperties(buildid: int, properties: Any):
        old = yield master.data.get(("builds", str(buildid), "properties"))
        real = properties.getProperties()
        rendered = yield real.render(real.asDict())
        changed = {k: v for k, v in rendered.items() if not (k in old and old[k] == v)}
        if changed:
            yield write(buildid, changed)
            yield rtype.generateUpdateEvent(buildid, changed)

    setBuildProperties.isUpdateMethod = True
    setBuildProperties.easeml_batched = True
    updates.setBuildProperties = setBuildProperties
