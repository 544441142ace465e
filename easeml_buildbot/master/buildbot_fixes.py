"""A fix for Buildbot 4.3 that the service depends on, applied by ``configure``.

Buildbot 4.3's REST API (``V2RootResource._write_json_data``) writes the response from a
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
